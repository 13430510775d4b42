"""Results-out latency: from the last image of a study received to its SR stored in the PACS and its
ORU acknowledged by the RIS, with the embedded demo models on this machine's CPUs.

    python -m bench.results_latency [--studies 10] [--size full|small] [--json OUT]

Real peers on loopback: Orthanc is the PACS (receives the TID 1500 and TID 4000 SRs), an hl7apy
MLLPServer is the RIS (answers AA). The node runs in-process with the default assembly settings
(settle 2 s) and the demo packages (built once with ``python -m export.bootstrap``, cached under
bench/out/). Two runs, side by side:

- baseline: the studies one at a time (each sent after the previous one's results arrived);
- back to back: each study sent as soon as the previous one's transfer finished, without waiting
  for results, as a PACS forwarding queue does (the target run: median <= 5 s);
- burst (extra, a stress figure): all studies at once, one storescu per study in parallel.

For each study: assembly wait (last image -> COMPLETE), queue wait (COMPLETE -> processing
started), preprocessing, VersaMammo, MammoRG, render_send (DONE -> last acknowledgement: the SRs
and the ORU are rendered on the delivery threads, then sent), total; then medians and the back-to-back/baseline ratio. These machines are
noisy: read the ratios and the breakdown, not single numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
TARGET_SECONDS = 5.0


def demo_packages() -> dict[str, Path]:
    """Build (once) the same demo packages `make run` installs."""
    cache = OUT / "demo-models"
    print(f"demo packages (cache {cache}; about 4 minutes the first time) ...", flush=True)
    proc = subprocess.run([sys.executable, "-m", "export.bootstrap", "--out", str(cache)], stdout=subprocess.PIPE,
                          text=True, check=True)
    return {kind: Path(p) for kind, p in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def phantom_studies(n: int, size: str) -> list[Path]:
    from training.data.phantom import PhantomOptions, write_phantom_studies

    root = OUT / f"results-phantoms-{size}-{n}"
    if not (root / "done").exists():
        print(f"generating {n} {size} phantom studies ...", flush=True)
        write_phantom_studies(root, n, seed=77, options=PhantomOptions(size=size))
        (root / "done").write_text("")
    return sorted(p for p in root.iterdir() if p.is_dir())


def _storescu(port: int, study: Path) -> subprocess.Popen:
    files = [str(study / f"{v}.dcm") for v in ("R-CC", "R-MLO", "L-CC", "L-MLO")]
    return subprocess.Popen(["storescu", "-aec", "MAMMO_NODE", "127.0.0.1", str(port), *files],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _breakdown(node: Any, uid: str) -> dict[str, float]:
    journal = node.app.journal
    study = journal.get_study(uid, with_events=True)
    last_image = max(i.received_at for i in journal.study_instances(uid))
    events = {e["to_state"]: e["at"] for e in study.events}
    started = next(e["at"] for e in study.events if e["to_state"] == "PROCESSING")
    done = events["DONE"]
    rows = node.app.outbox.queue.list(study_uid=uid)
    delivered = max(r.delivered_at for r in rows)
    timings = journal.get_result(uid).get("timings", {})
    return {"assembly_wait": events["COMPLETE"] - last_image, "queue_wait": started - events["COMPLETE"],
            "preprocess": timings.get("preprocess", 0.0), "versamammo": timings.get("versamammo", 0.0),
            "mammorg": timings.get("mammorg", 0.0), "render_send": delivered - done, "total": delivered - last_image}


def run(studies: list[Path], packages: dict[str, Path], mode: str) -> list[dict[str, float]]:
    from node.app import NodeApp
    from node.config import Settings
    from node.packages.registry import ModelRegistry
    from tests.node.conftest import RunningNode, free_port, study_uid_of, wait_for
    from tests.node.peers import RIS, Orthanc

    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        tmp_path = Path(tmp)
        pacs, ris = Orthanc(tmp_path / "orthanc").start(), RIS().start()
        data = tmp_path / "var"
        registry = ModelRegistry(data / "models")
        for path in packages.values():
            registry.install(path, activate=True)
        settings = Settings(
            node={"data_dir": str(data), "min_free_mb": 1}, dicom={"port": free_port(), "bind": "127.0.0.1"},
            http={"port": 0},
            outputs={"dicom": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port,
                                "reports": ["tid1500", "tid4000"]}],
                     "hl7": {"host": "127.0.0.1", "port": ris.port}})
        app = NodeApp(settings)
        app.start()
        node = RunningNode(app, settings)
        try:
            uids = [study_uid_of(s) for s in studies]

            def delivered(uid: str) -> bool:
                rows = app.outbox.queue.list(study_uid=uid)
                return len(rows) == 3 and all(r.state == "DELIVERED" for r in rows)

            if mode == "burst":
                procs = [_storescu(node.port, s) for s in studies]
                for p in procs:
                    p.wait()
            elif mode == "back_to_back":
                for study in studies:
                    _storescu(node.port, study).wait()
            if mode in ("burst", "back_to_back"):
                for uid in uids:
                    wait_for(lambda: delivered(uid), timeout=600, interval=0.05)
            else:
                for study, uid in zip(studies, uids):
                    _storescu(node.port, study).wait()
                    wait_for(lambda: delivered(uid), timeout=600, interval=0.05)
            return [_breakdown(node, uid) for uid in uids]
        finally:
            app.stop()
            ris.stop()
            pacs.stop()


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--size", choices=["full", "small"], default="full")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TCP_NODELAY", "1")
    packages = demo_packages()
    studies = phantom_studies(args.studies, args.size)
    print(f"{len(studies)} {args.size} studies, {os.cpu_count()} CPUs", flush=True)
    baseline = run(studies, packages, "one_at_a_time")
    back = run(studies, packages, "back_to_back")
    burst = run(studies, packages, "burst")
    keys = list(baseline[0])
    print(f"\n{'median seconds':<16}" + "".join(f"{k:>15}" for k in keys))
    b, t, u = _summary(baseline), _summary(back), _summary(burst)
    for label, row in (("one at a time", b), ("back to back", t), ("burst", u)):
        print(f"{label:<16}" + "".join(f"{row[k]:>15.3f}" for k in keys))
    for label, row in (("ratio b2b/one", t), ("ratio burst/one", u)):
        print(f"{label:<16}" + "".join(f"{(row[k] / b[k] if b[k] else float('nan')):>15.2f}" for k in keys))
    totals = ", ".join(f"{r['total']:.2f}" for r in back)
    print(f"\nback-to-back per study, total s: {totals}")
    verdict = "meets" if t["total"] <= TARGET_SECONDS else "MISSES"
    print(f"median last image -> SR stored + ORU acknowledged, back to back: {t['total']:.2f} s "
          f"({verdict} the <= {TARGET_SECONDS:.0f} s target; {t['total'] / TARGET_SECONDS:.2f} of it)")
    if args.json:
        args.json.write_text(json.dumps({"baseline": baseline, "back_to_back": back, "burst": burst,
                                         "median_baseline": b, "median_back_to_back": t, "median_burst": u},
                                        indent=2))


if __name__ == "__main__":
    main()
