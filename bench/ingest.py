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
4. Receive checks (issue 17): per full-size image and transfer syntax (Explicit VR, Deflated,
   JPEG lossless, JPEG-LS, JPEG 2000, RLE), side by side on the same files in the same run: the
   header read the node did before issue 17, the inspection now (structure walk, pixel-module and
   codestream header checks), and the inspection with the first frame decoded
   (``dicom.decode_first_frame``). Each difference is given as a share of the node's time per
   image (target < 10%): by default the node's time for *that syntax* (a fresh node receives the
   syntax's images, decode off and on, alternating: ``--node-rounds``; Deflated: the Explicit VR
   time, as storescu re-deflates while sending), with ``--node-rate`` the img/s of a run of (1)
   instead. ``--checks-only`` runs this part alone.

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
    from phantoms.study import PhantomOptions, write_phantom_studies

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

    def __init__(self, workdir: Path, settle: float = SETTLE, decode: list[str] | None = None) -> None:
        self.port = _free_port()
        self.data_dir = workdir / "node-var"
        config = workdir / "node.toml"
        decode_line = f"decode_first_frame = {json.dumps(decode)}\n" if decode is not None else ""
        config.write_text(
            f'[node]\ndata_dir = "{self.data_dir}"\nmin_free_mb = 100\nlog_level = "WARNING"\n'
            f'[dicom]\nport = {self.port}\nbind = "127.0.0.1"\n{decode_line}'
            f"[assembly]\nsettle_seconds = {settle}\nclose_on_release = false\nquiet_seconds = 600\n"
            "deadline_seconds = 3600\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_NODE_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "node.cli.app", "serve", "--config", str(config)],
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


def _storescu(port: int, files: list[Path], *options: str) -> float:
    start = time.perf_counter()
    result = subprocess.run([_tool("storescu"), *options, "-aec", "MAMMO_NODE", "127.0.0.1", str(port),
                             *map(str, files)],
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


# Transfer syntaxes of part 4: the phantom generator's names, plus "jpeg" (JPEG Lossless SV1, made
# from the Explicit VR images with DCMTK's dcmcjpeg: pydicom has no JPEG lossless encoder).
CHECK_SYNTAXES = ("explicit", "deflated", "jpeg", "jpeg-ls", "jpeg2000", "rle")
DECODED = {"jpeg": "jpeg", "jpeg-ls": "jpeg-ls", "jpeg2000": "jpeg2000", "rle": "rle"}
# storescu proposes only uncompressed transfer syntaxes unless told (it does not transcode).
# Deflated is not timed end to end: storescu inflates and deflates again while sending, which would
# be timed instead of the node; its share is taken of the node's Explicit VR time.
STORESCU_PROPOSE = {"jpeg": "-xs", "jpeg-ls": "-xt", "jpeg2000": "-xv", "rle": "-xr"}


def _syntax_files(syntax: str, images: int) -> list[Path]:
    """A full-size study in a transfer syntax, generated once and cached."""
    from phantoms.study import PhantomOptions, write_phantom_studies

    if syntax == "explicit" and CACHE.exists():
        return sorted(CACHE.glob("study-*/*.dcm"))[:images]
    cache = ROOT / "bench" / "out" / f"phantoms-full-{syntax}"
    if not (cache / "done").exists():
        shutil.rmtree(cache, ignore_errors=True)
        print(f"generating a full-size {syntax} phantom study (cached in {cache}) ...", flush=True)
        if syntax == "jpeg":
            for source in _syntax_files("explicit", 4):
                target = cache / source.parent.name / source.name
                target.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run([_tool("dcmcjpeg"), "+e1", str(source), str(target)], check=True,
                               capture_output=True)
        else:
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


def node_ms_per_image(syntax: str, files: list[Path], rounds: int) -> dict:
    """Milliseconds per image a fresh node takes to receive ``files`` (one storescu association),
    with the first-frame decode off and on, alternating; medians over ``rounds`` of each."""
    times: dict[str, list[float]] = {"off": [], "on": []}
    decode = DECODED.get(syntax)
    for i in range(rounds):
        order = ("off", "on") if i % 2 == 0 else ("on", "off")
        for which in order:
            if which == "on" and decode is None:
                continue
            with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "out") as tmp:
                node = Node(Path(tmp), decode=[decode] if which == "on" else [])
                try:
                    options = [STORESCU_PROPOSE[syntax]] if syntax in STORESCU_PROPOSE else []
                    times[which].append(_storescu(node.port, files, *options) * 1000 / len(files))
                finally:
                    node.stop()
    return {k: statistics.median(v) for k, v in times.items() if v}


def receive_checks(syntaxes: list[str], images: int, node_rate: float | None, repeat: int = 3,
                   node_rounds: int = 2) -> dict:
    """Per syntax, milliseconds per image, interleaved on the same files: the header read before
    issue 17, the inspection now (no decode) and the inspection with the first frame decoded;
    the differences as a share of the node's time per image (``node_rate`` img/s for every syntax,
    or, when None, the node's own time for that syntax with the decode off)."""
    from pydicom import dcmread
    from pydicom.uid import UID

    from pydicom.pixels import get_decoder

    from node.dicom.decode import decoding_plugin
    from node.dicom.inspect import DEFAULT_MAX_INFLATED, inspect_instance
    from node.dicom.structure import check_structure

    out: dict = {"node_rate_img_s": node_rate, "syntaxes": {}}
    for syntax in syntaxes:
        files = _syntax_files(syntax, images)
        decode = [DECODED[syntax]] if syntax in DECODED else []
        walk, before, now, decoded = [], [], [], []
        plugin = None
        for path in files:
            ds = dcmread(path, stop_before_pixels=True)
            ts = UID(ds.file_meta.TransferSyntaxUID)
            plugin = decoding_plugin(str(ts)) if decode else None
            if plugin == "":  # pydicom's order: the first available plugin decodes unless it fails
                plugin = get_decoder(ts).available_plugins[0]
            args = (path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), DEFAULT_MAX_INFLATED)
            for _ in range(repeat):
                start = time.perf_counter()
                check_structure(path, ts.is_implicit_VR, ts.is_deflated, DEFAULT_MAX_INFLATED)
                walk.append(time.perf_counter() - start)
                start = time.perf_counter()
                _header_read_before_issue_17(path)
                before.append(time.perf_counter() - start)
                start = time.perf_counter()
                inspect_instance(*args)
                now.append(time.perf_counter() - start)
                if decode:
                    start = time.perf_counter()
                    inspect_instance(*args, decode_families=decode)
                    decoded.append(time.perf_counter() - start)
        row: dict = {"images": len(files), "transfer_syntax": str(ts), "decoder": plugin,
                     "walk_ms": statistics.median(walk) * 1000, "before_ms": statistics.median(before) * 1000,
                     "now_ms": statistics.median(now) * 1000}
        if decoded:
            row["decode_ms"] = statistics.median(decoded) * 1000
        if node_rate:
            row["node_ms_per_image"] = 1000.0 / node_rate
        elif syntax == "deflated":
            explicit = out["syntaxes"].get("explicit", {}).get("node_ms_per_image")
            if explicit is None:
                explicit = node_ms_per_image("explicit", _syntax_files("explicit", images), node_rounds)["off"]
            row["node_ms_per_image"] = explicit
        else:
            measured = node_ms_per_image(syntax, files, node_rounds)
            row["node_ms_per_image"] = measured["off"]
            if "on" in measured:
                row["node_ms_per_image_decoding"] = measured["on"]
                row["node_throughput_ratio_decoding"] = measured["off"] / measured["on"]
        per_image = row["node_ms_per_image"]
        row["added_ms"] = row["now_ms"] - row["before_ms"]
        row["added_share"] = row["added_ms"] / per_image
        line = (f"checks {syntax}: before {row['before_ms']:.2f} ms, now {row['now_ms']:.2f} ms "
                f"({row['added_ms']:+.2f} = {100 * row['added_share']:+.1f}%)")
        if decoded:
            row["decode_added_ms"] = row["decode_ms"] - row["now_ms"]
            row["decode_share"] = (row["decode_ms"] - row["before_ms"]) / per_image
            line += (f", with frame decode ({row['decoder']}) {row['decode_ms']:.1f} ms "
                     f"({row['decode_added_ms']:+.1f}; all checks {100 * row['decode_share']:+.0f}%)")
        line += f" of the node's {per_image:.0f} ms per image (target < 10%)"
        if "node_throughput_ratio_decoding" in row:
            line += (f"; node end to end {per_image:.0f} -> {row['node_ms_per_image_decoding']:.0f} ms per image "
                     f"with the decode on (throughput x{row['node_throughput_ratio_decoding']:.2f})")
        print(line, flush=True)
        out["syntaxes"][syntax] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "ingest.json")
    parser.add_argument("--checks-syntaxes", default=",".join(CHECK_SYNTAXES))
    parser.add_argument("--checks-only", action="store_true", help="only part 4")
    parser.add_argument("--node-rate", type=float, default=None,
                        help="part 4: node img/s to compare against (default: measure the node per syntax)")
    parser.add_argument("--node-rounds", type=int, default=2, help="part 4: node runs per syntax and setting")
    args = parser.parse_args()
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    syntaxes = [s for s in args.checks_syntaxes.split(",") if s]
    unknown = sorted(set(syntaxes) - set(CHECK_SYNTAXES))
    if unknown:
        sys.exit(f"--checks-syntaxes: unknown {unknown}; one of {list(CHECK_SYNTAXES)}")
    if args.checks_only:
        result = {"receive_checks": receive_checks(syntaxes, min(args.images, 4), args.node_rate,
                                                   node_rounds=args.node_rounds)}
        args.json.write_text(json.dumps(result, indent=2))
        return
    files = phantom_files(args.images)
    size_mb = sum(f.stat().st_size for f in files) / 2**20
    print(f"{len(files)} images, {size_mb:.0f} MB; {args.rounds} alternating rounds", flush=True)
    result = {"images": len(files), "megabytes": size_mb, "cpu_count": os.cpu_count()}
    result["throughput"] = throughput(files, args.rounds)
    result["memory_assembly"] = memory_and_assembly(files)
    result["receive_checks"] = receive_checks(syntaxes, 4, args.node_rate, node_rounds=args.node_rounds)
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
