"""A small HL7 v2 MLLP listener that plays the RIS in a test lab (docker compose, docs).

    python deploy/ris/ris_listener.py --port 2575 --out /tmp/ris-messages.hl7 [--bind 127.0.0.1]

It answers every ORU^R01 with an AA acknowledgement (MSA-2 = the message's MSH-10) and appends
the message, one per line with segments separated by " | ", to ``--out``. Not for production:
it validates nothing and keeps everything.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from hl7apy.mllp import AbstractHandler, MLLPServer


def acknowledgement(message: str, code: str = "AA") -> str:
    """An MLLP-framed ACK for an ER7 ``message``."""
    msh = message.split("\r")[0].split("|")
    control_id = msh[9] if len(msh) > 9 else ""
    header = "|".join(["MSH", "^~\\&", msh[4] if len(msh) > 4 else "", msh[5] if len(msh) > 5 else "",
                       msh[2] if len(msh) > 2 else "", msh[3] if len(msh) > 3 else "",
                       time.strftime("%Y%m%d%H%M%S"), "", "ACK^R01^ACK", ("ACK" + control_id)[:20], "P", "2.5.1"])
    return "\x0b" + header + "\r" + f"MSA|{code}|{control_id}\r" + "\x1c\r"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2575)
    parser.add_argument("--out", type=Path, required=True, help="file the received messages are appended to")
    args = parser.parse_args(argv)
    out = args.out

    class Handler(AbstractHandler):
        def reply(self) -> str:
            with open(out, "a", encoding="utf-8") as fh:
                fh.write(self.incoming_message.strip("\r").replace("\r", " | ") + "\n")
            return acknowledgement(self.incoming_message)

    server = MLLPServer(args.bind, args.port, {"ORU^R01^ORU_R01": (Handler,), "ORU^R01": (Handler,)}, timeout=30)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"RIS listener on {args.bind}:{args.port}, writing to {out}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
