"""Real peers for the end-to-end tests: Orthanc as the PACS, hl7apy's MLLPServer as the RIS.

Both run on loopback with free ports and can be stopped and started again (a peer that is down,
then up). The RIS answers each ORU with the next acknowledgement code of its ``script`` (then AA),
records every message it receives, and detects duplicates by MSH-10 as a real RIS does.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.node.conftest import free_port, wait_for
from tests.tools import require_tool


def http(method: str, url: str, body: bytes | None = None, timeout: float = 60) -> bytes:
    request = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


class Orthanc:
    """One Orthanc process with its own storage; ``start()`` / ``stop()`` keep the same ports and data."""

    def __init__(self, root: Path, modalities: dict[str, list[Any]] | None = None) -> None:
        self.binary = require_tool("Orthanc")
        self.root = root
        self.http_port, self.dicom_port = free_port(), free_port()
        self.modalities = modalities or {}
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "Orthanc":
        config = {
            "Name": "test-pacs", "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "DicomAet": "ORTHANC", "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "Plugins": [], "DicomModalities": self.modalities, "StableAge": 3600,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "orthanc.json").write_text(json.dumps(config))
        self.proc = subprocess.Popen([self.binary, str(self.root / "orthanc.json")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=dict(os.environ, TCP_NODELAY="1"))

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "Orthanc exited"
            try:
                return bool(http("GET", self.base + "/system", timeout=2))
            except OSError:
                return False

        wait_for(up, timeout=30, interval=0.1)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None

    def get(self, path: str) -> Any:
        return json.loads(http("GET", self.base + path))

    def upload(self, path: Path) -> None:
        http("POST", self.base + "/instances", path.read_bytes())

    def forward_study(self, study_uid: str, modality: str) -> dict[str, Any]:
        """C-STORE the images of one study (not our SRs) to ``modality``, as a PACS routing rule does."""
        found = json.loads(http("POST", self.base + "/tools/lookup", study_uid.encode()))
        study_id = next(f["ID"] for f in found if f["Type"] == "Study")
        series = [s for s in self.get(f"/studies/{study_id}/series") if s["MainDicomTags"].get("Modality") == "MG"]
        return json.loads(http("POST", self.base + f"/modalities/{modality}/store",
                               json.dumps({"Resources": [s["ID"] for s in series], "Synchronous": True}).encode()))

    def instances_of_modality(self, modality: str = "SR") -> list[dict[str, Any]]:
        """Every instance in a series of ``modality``, with its tags (study UID, SOP class, ...)."""
        out = []
        for series_id in self.get("/series"):
            series = self.get(f"/series/{series_id}")
            if series["MainDicomTags"].get("Modality") != modality:
                continue
            for instance_id in series["Instances"]:
                tags = self.get(f"/instances/{instance_id}/simplified-tags")
                out.append({"id": instance_id, "tags": tags, "parent_study": self.get(
                    f"/studies/{series['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"]})
        return out

    def file(self, instance_id: str) -> bytes:
        return http("GET", self.base + f"/instances/{instance_id}/file")


@dataclass
class RIS:
    """An MLLP listener that plays the RIS (hl7apy.mllp.MLLPServer)."""

    port: int = field(default_factory=free_port)
    script: list[str] = field(default_factory=list)  # ACK codes to answer, in order; then AA
    delay: float = 0.0  # seconds to wait before answering (to catch a node mid-send)
    received: list[str] = field(default_factory=list)
    _server: Any = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "RIS":
        from hl7apy.mllp import AbstractHandler, MLLPServer

        ris = self

        class Handler(AbstractHandler):
            def reply(self) -> str:
                message = self.incoming_message
                with ris._lock:
                    ris.received.append(message)
                    code = ris.script.pop(0) if ris.script else "AA"
                if ris.delay:
                    time.sleep(ris.delay)
                return ack_for(message, code)

        self._server = MLLPServer("127.0.0.1", self.port, {"ORU^R01^ORU_R01": (Handler,)}, timeout=30)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def control_ids(self) -> list[str]:
        return [m.split("\r")[0].split("|")[9] for m in self.received]

    def accepted(self) -> set[str]:
        """Distinct control IDs the RIS has accepted (what its duplicate detection keeps)."""
        return set(self.control_ids())


def ack_for(message: str, code: str) -> str:
    """An MLLP-framed ACK for ``message`` with MSA-1 ``code``, as a RIS answers."""
    msh = message.split("\r")[0].split("|")
    control_id = msh[9]
    header = "|".join(["MSH", "^~\\&", msh[4], msh[5], msh[2], msh[3], time.strftime("%Y%m%d%H%M%S"), "",
                       "ACK^R01^ACK", "ACK" + control_id[-17:], "P", "2.5.1"])
    body = header + "\r" + f"MSA|{code}|{control_id}" + ("" if code == "AA" else "|test RIS says " + code) + "\r"
    return "\x0b" + body + "\x1c\r"
