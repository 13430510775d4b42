"""Ingest benchmark: the node against DCMTK storescp, side by side, alternating runs.

    python -m bench.ingest [--rounds 3] [--images 40] [--json OUT]

1. Throughput: the same full-size phantom images (3328x2560, 14-bit, about 17 MB each) are
   sent with DCMTK storescu to the node (fsync on, as in production) and to storescp (started
   with TCP_NODELAY=1, writing to disk, no fsync), alternating, each run into a fresh data
   directory so nothing is a duplicate. Prints images/s per run and the node/storescp ratio
   of each pair (target >= 0.7, goal >= 1.0) and their median.
2. Memory: peak RSS of the node process above idle while 4 associations each send a whole
   full-size study at once (target < 300 MB: nothing buffers a study).
3. Assembly: for every study, how long after ``four views + settle`` it was marked COMPLETE
   (target <= 100 ms).
4. Receive checks (issue 17): per full-size image, the time of the structure walk and the
   pixel-module/codestream checks added before acknowledging, for Explicit VR, JPEG-LS and
   Deflated images, as a share of the node's time per image in (1) (target < 10%).
   ``--checks-only`` runs this part alone (on the node rate of ``--node-rate`` img/s).

These machines are noisy: compare the ratio, not the absolute numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / "out" / "phantoms-full"
SETTLE = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        sys.exit(f"{name} not found: install DCMTK (apt-get install dcmtk) or run `make install-dev` as root")
    return path


def phantom_files(images: int) -> list[Path]:
    """Full-size phantom studies, generated once and cached under bench/out/."""
    from training.data.phantom import PhantomOptions, write_phantom_studies

    studies = (images + 3) // 4
    marker = CACHE / f"done-{studies}"
    if not marker.exists():
        shutil.rmtree(CACHE, ignore_errors=True)
        print(f"generating {studies} full-size phantom studies (cached in {CACHE}) ...", flush=True)
        write_phantom_studies(CACHE, studies, seed=2026, options=PhantomOptions(size="full"))
        marker.write_text("ok")
    files = sorted(CACHE.glob("study-*/*.dcm"))
    return files[:images]


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class Node:
    """A `mammo-node serve` subprocess on a fresh data directory."""

    def __init__(self, workdir: Path, settle: float = SETTLE) -> None:
        self.port = _free_port()
        self.data_dir = workdir / "node-var"
        config = workdir / "node.toml"
        config.write_text(
            f'[node]\ndata_dir = "{self.data_dir}"\nmin_free_mb = 100\nlog_level = "WARNING"\n'
            f'[dicom]\nport = {self.port}\nbind = "127.0.0.1"\n'
            f"[assembly]\nsettle_seconds = {settle}\nquiet_seconds = 600\ndeadline_seconds = 3600\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_NODE_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--config", str(config)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class StoreSCP:
    """DCMTK storescp writing to a fresh directory, Nagle off as ENVIRONMENT.md advises."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        out = workdir / "storescp-out"
        out.mkdir()
        env = dict(os.environ, TCP_NODELAY="1")
        self.proc = subprocess.Popen([_tool("storescp"), "-od", str(out), str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _storescu(port: int, files: list[Path]) -> float:
    start = time.perf_counter()
    result = subprocess.run([_tool("storescu"), "-aec", "MAMMO_NODE", "127.0.0.1", str(port), *map(str, files)],
                            capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-2000:]}")
    return elapsed


def throughput(files: list[Path], rounds: int) -> dict:
    runs = []
    for i in range(rounds):
        pair = {}
        order = ("storescp", "node") if i % 2 == 0 else ("node", "storescp")
        for which in order:
            with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "out") as tmp:
                server = StoreSCP(Path(tmp)) if which == "storescp" else Node(Path(tmp))
                try:
                    seconds = _storescu(server.port, files)
                finally:
                    server.stop()
            pair[which] = len(files) / seconds
        pair["ratio"] = pair["node"] / pair["storescp"]
        runs.append(pair)
        print(f"round {i + 1}: node {pair['node']:.1f} img/s, storescp {pair['storescp']:.1f} img/s, "
              f"ratio {pair['ratio']:.2f}", flush=True)
    return {"runs": runs, "median_ratio": statistics.median(r["ratio"] for r in runs),
            "node_median": statistics.median(r["node"] for r in runs),
            "storescp_median": statistics.median(r["storescp"] for r in runs)}


def memory_and_assembly(files: list[Path]) -> dict:
    studies = sorted({f.parent for f in files})[:4]
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "out") as tmp:
        node = Node(Path(tmp))
        try:
            process = psutil.Process(node.proc.pid)
            time.sleep(1.0)
            idle = process.memory_info().rss
            peak = idle
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, process.memory_info().rss)
                    time.sleep(0.005)

            sampler = threading.Thread(target=sample)
            sampler.start()
            senders = [subprocess.Popen([_tool("storescu"), "-aec", "MAMMO_NODE", "127.0.0.1", str(node.port),
                                         *map(str, sorted(s.glob("*.dcm")))],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for s in studies]
            codes = [p.wait() for p in senders]
            time.sleep(SETTLE + 0.5)
            done.set()
            sampler.join()
            if any(codes):
                raise RuntimeError(f"a concurrent storescu failed: {codes}")
            from node.journal import Journal

            journal = Journal(node.data_dir / "journal.sqlite3")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and journal.state_counts().get("COMPLETE", 0) < len(studies):
                time.sleep(0.1)
            delays = [
                (s.closed_at - max(s.four_views_at, s.last_received_at) - SETTLE) * 1000
                for s in journal.list_studies(state="COMPLETE")
            ]
            journal.close()
        finally:
            node.stop()
    return {"idle_rss_mb": idle / 2**20, "peak_rss_mb": peak / 2**20, "peak_above_idle_mb": (peak - idle) / 2**20,
            "studies": len(studies), "complete_after_settle_ms": delays}


def _syntax_files(syntax: str, images: int) -> list[Path]:
    """A full-size study in a transfer syntax, generated once and cached."""
    from training.data.phantom import PhantomOptions, write_phantom_studies

    if syntax == "explicit" and CACHE.exists():
        return sorted(CACHE.glob("study-*/*.dcm"))[:images]
    cache = ROOT / "bench" / "out" / f"phantoms-full-{syntax}"
    if not (cache / "done").exists():
        shutil.rmtree(cache, ignore_errors=True)
        print(f"generating a full-size {syntax} phantom study (cached in {cache}) ...", flush=True)
        write_phantom_studies(cache, 1, seed=2027, options=PhantomOptions(size="full", transfer_syntax=syntax))
        (cache / "done").write_text("ok")
    return sorted(cache.glob("study-*/*.dcm"))[:images]


def _header_read_before_issue_17(path: Path) -> None:
    """What the receive path did before the added checks: pydicom's lenient header read."""
    from pydicom import dcmread

    ds = dcmread(path, defer_size=1024)
    for tag in list(ds.keys()):
        if tag != 0x7FE00010:
            ds[tag]


def receive_checks(syntaxes: list[str], images: int, node_rate: float, repeat: int = 5) -> dict:
    """Milliseconds per image of the receive-time inspection now (structure walk, header read,
    identifier, pixel-module and codestream checks) against the header read it replaced, and the
    difference as a share of the node's time per image."""
    from pydicom import dcmread
    from pydicom.uid import UID

    from node.dicom.inspect import DEFAULT_MAX_INFLATED, inspect_instance
    from node.dicom.structure import check_structure

    per_image_ms = 1000.0 / node_rate
    out: dict = {"node_rate_img_s": node_rate, "node_ms_per_image": per_image_ms, "syntaxes": {}}
    for syntax in syntaxes:
        files = _syntax_files(syntax, images)
        walk, before, now = [], [], []
        for path in files:
            ds = dcmread(path, stop_before_pixels=True)
            ts = UID(ds.file_meta.TransferSyntaxUID)
            for _ in range(repeat):
                start = time.perf_counter()
                check_structure(path, ts.is_implicit_VR, ts.is_deflated, DEFAULT_MAX_INFLATED)
                walk.append(time.perf_counter() - start)
                start = time.perf_counter()
                _header_read_before_issue_17(path)
                before.append(time.perf_counter() - start)
                start = time.perf_counter()
                inspect_instance(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
                now.append(time.perf_counter() - start)
        row = {"images": len(files), "walk_ms": statistics.median(walk) * 1000,
               "before_ms": statistics.median(before) * 1000, "now_ms": statistics.median(now) * 1000}
        row["added_ms"] = row["now_ms"] - row["before_ms"]
        row["added_share_of_node_time"] = row["added_ms"] / per_image_ms
        out["syntaxes"][syntax] = row
        print(f"checks {syntax}: inspection {row['now_ms']:.2f} ms per image (structure walk {row['walk_ms']:.2f}) "
              f"vs {row['before_ms']:.2f} ms before; added {row['added_ms']:+.2f} ms = "
              f"{100 * row['added_share_of_node_time']:+.1f}% of the node's {per_image_ms:.0f} ms per image "
              f"(target < 10%)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "ingest.json")
    parser.add_argument("--checks-syntaxes", default="explicit,jpeg-ls,deflated")
    parser.add_argument("--checks-only", action="store_true", help="only part 4, against --node-rate")
    parser.add_argument("--node-rate", type=float, default=None, help="node img/s for --checks-only")
    args = parser.parse_args()
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    syntaxes = [s for s in args.checks_syntaxes.split(",") if s]
    if args.checks_only:
        if not args.node_rate:
            sys.exit("--checks-only needs --node-rate (img/s from a full run)")
        result = {"receive_checks": receive_checks(syntaxes, min(args.images, 4), args.node_rate)}
        args.json.write_text(json.dumps(result, indent=2))
        return
    files = phantom_files(args.images)
    size_mb = sum(f.stat().st_size for f in files) / 2**20
    print(f"{len(files)} images, {size_mb:.0f} MB; {args.rounds} alternating rounds", flush=True)
    result = {"images": len(files), "megabytes": size_mb, "cpu_count": os.cpu_count()}
    result["throughput"] = throughput(files, args.rounds)
    result["memory_assembly"] = memory_and_assembly(files)
    result["receive_checks"] = receive_checks(syntaxes, 4, result["throughput"]["node_median"])
    t, m = result["throughput"], result["memory_assembly"]
    print()
    print(f"throughput: node {t['node_median']:.1f} img/s, storescp {t['storescp_median']:.1f} img/s, "
          f"median ratio node/storescp {t['median_ratio']:.2f} (target >= 0.7, goal >= 1.0)")
    print(f"memory: 4 concurrent full-size studies, peak RSS {m['peak_rss_mb']:.0f} MB, "
          f"{m['peak_above_idle_mb']:.0f} MB above idle (target < 300)")
    delays = m["complete_after_settle_ms"]
    if delays:
        print(f"assembly: COMPLETE {max(delays):.0f} ms at most after four views + settle (target <= 100)")
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
