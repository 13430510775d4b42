"""Results-out latency: from the last image of a study received to its SR stored in the PACS and its
ORU acknowledged by the RIS, with the embedded demo models on this machine's CPUs.

    python -m bench.results_latency [--studies 10] [--size full|small] [--json OUT]

Real peers on loopback: Orthanc is the PACS (receives the TID 1500 and TID 4000 SRs), an hl7apy
MLLPServer is the RIS (answers AA). The node runs in-process with the demo packages (the shipped
ones in deploy/demo-models when present, else built once with ``python -m export.bootstrap`` and
cached under bench/out/). Each study goes over one association (storescu), released at the end.

Two rules, run back to back in the same process for each load (the ratios are what to read):

- old: the settle rule only (assembly.close_on_release = false, settle 2 s), no speculative runs,
  one association to the PACS per batch (keep_open_seconds = 0): the node before issue 22;
- new: the defaults: close release_grace_seconds (0.2 s) after the association is released,
  a speculative run while the study settles, the PACS association kept open between studies.

Loads:

- one at a time: each study sent after the previous one's results arrived;
- back to back: each study sent as soon as the previous one's transfer finished, without waiting
  for results, as a PACS forwarding queue does (target: median <= 2 s);
- burst: all studies at once, one storescu per study in parallel (target: median <= 4 s).

For each study: assembly wait (last image -> COMPLETE), queue wait (COMPLETE -> processing
started), processing (PROCESSING -> DONE: the models, or taking a speculative run's result, and
planning the outputs), the model timings themselves (preprocessing, VersaMammo, MammoRG, wherever
they ran), render_send (DONE -> last acknowledgement: the SRs and the ORU rendered on the delivery
threads, then sent), total, and kept (1 when a speculative run's result was used). These machines
are noisy: read the ratios and the breakdown, not single numbers.
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
TARGETS = {"back_to_back": 2.0, "burst": 4.0}
LOADS = ("one_at_a_time", "back_to_back", "burst")
# The node before issue 22: the settle rule only, no speculative runs, one PACS association per batch.
OLD_RULE = {"assembly": {"close_on_release": False}, "inference": {"speculative_runs": 0}}


def demo_packages() -> dict[str, Path]:
    """The demo packages `make run` installs: the shipped ones, else built once."""
    from node.packages.demo import shipped_packages

    shipped = shipped_packages()
    if shipped is not None:
        return shipped
    cache = OUT / "demo-models"
    print(f"demo packages (cache {cache}; about 4 minutes the first time) ...", flush=True)
    proc = subprocess.run([sys.executable, "-m", "export.bootstrap", "--out", str(cache)], stdout=subprocess.PIPE,
                          text=True, check=True)
    return {kind: Path(p) for kind, p in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def phantom_studies(n: int, size: str) -> list[Path]:
    from phantoms.study import PhantomOptions, write_phantom_studies

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
    done_event = next(e for e in study.events if e["to_state"] == "DONE")
    done = done_event["at"]
    rows = node.app.outbox.queue.list(study_uid=uid)
    delivered = max(r.delivered_at for r in rows)
    timings = journal.get_result(uid).get("timings", {})
    closed = next(e["at"] for e in study.events if e["to_state"] == "COMPLETE")
    return {"assembly_wait": closed - last_image, "queue_wait": started - closed, "processing": done - started,
            "preprocess": timings.get("preprocess", 0.0), "versamammo": timings.get("versamammo", 0.0),
            "mammorg": timings.get("mammorg", 0.0), "render_send": delivered - done, "total": delivered - last_image,
            "kept": 1.0 if "speculative run kept" in done_event["reason"] else 0.0}


def run(studies: list[Path], packages: dict[str, Path], mode: str, rule: str = "new") -> list[dict[str, float]]:
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
        pacs_destination = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port,
                            "reports": ["tid1500", "tid4000"]}
        if rule == "old":
            pacs_destination["keep_open_seconds"] = 0
        settings = Settings(
            node={"data_dir": str(data), "min_free_mb": 1}, dicom={"port": free_port(), "bind": "127.0.0.1"},
            http={"port": 0},
            outputs={"dicom": [pacs_destination], "hl7": {"host": "127.0.0.1", "port": ris.port}},
            **(OLD_RULE if rule == "old" else {}))
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
    parser.add_argument("--loads", nargs="+", choices=LOADS, default=list(LOADS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TCP_NODELAY", "1")
    packages = demo_packages()
    studies = phantom_studies(args.studies, args.size)
    print(f"{len(studies)} {args.size} studies, {os.cpu_count()} CPUs", flush=True)
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for load in args.loads:
        raw[load] = {}
        for rule in ("old", "new"):  # side by side: the baseline right before the new rule, same load
            print(f"{load}, {rule} rule ...", flush=True)
            raw[load][rule] = run(studies, packages, load, rule)
        medians[load] = {rule: _summary(rows) for rule, rows in raw[load].items()}
    keys = list(next(iter(medians.values()))["old"])
    print(f"\n{'median seconds':<22}" + "".join(f"{k:>14}" for k in keys))
    for load, by_rule in medians.items():
        old, new = by_rule["old"], by_rule["new"]
        for rule, row in (("old", old), ("new", new)):
            print(f"{load + ' ' + rule:<22}" + "".join(f"{row[k]:>14.3f}" for k in keys))
        print(f"{load + ' new/old':<22}" + "".join(
            f"{(new[k] / old[k] if old[k] else float('nan')):>14.2f}" for k in keys))
    for load, target in TARGETS.items():
        if load in medians:
            total = medians[load]["new"]["total"]
            verdict = "meets" if total <= target else "MISSES"
            print(f"{load}: median last image -> SRs stored + ORU acknowledged {total:.2f} s with the new rule "
                  f"({verdict} <= {target:g} s; old rule {medians[load]['old']['total']:.2f} s)")
    if args.json:
        args.json.write_text(json.dumps({"raw": raw, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
