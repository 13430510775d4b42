"""How well the node's models read phantom studies, judged on what the node itself reports.

    python -m bench.demo_quality [--studies 40] [--seed 20261207] [--json] [--out FILE]
    python -m bench.demo_quality --packages DIR DIR          # any two package directories
    python -m bench.demo_quality --versamammo REF|DIR --mammorg REF|DIR

End to end, the way a site would see it: N small phantom studies (``phantoms.study``) are
sent over DICOM (``mammo-node send``) to a real node (``mammo-node serve`` on a fresh data
directory and a free port, settle 0.5 s), whose two packages were installed and activated with
``mammo-node models install --activate``; once every study is DONE (or FAILED, which is
reported) each study's structured result is read with ``mammo-node studies show KEY --json``,
exactly as an administrator reads it, and scored per breast (two per study) against the
phantom's labels.json:

- density accuracy (and macro-F1) of the reported ``density`` (what goes into the SRs and the
  ORU) and, separately, of ``classifier.density``;
- BI-RADS accuracy and macro-F1 over the classes 0-5 (4A/4B/4C merged into 4) of the reported
  ``birads`` and of ``classifier.birads``;
- lesion-present AUC (truth: BI-RADS != 1; score: 1 - classifier P(BI-RADS 1)) and suspicious
  AUC (truth: 4A/4B/4C/5; score: P(4) + P(5));
- report findings, masses and calcifications separately: recall and precision of the generated
  report naming that kind (parsed status POS or UNC) in the right breast;
- "report varies": distinct report texts over the studies and the most repeated text's count.

Every figure has its baseline beside it (the majority class of the scored breasts, AUC 0.5,
always / never naming a finding, one constant report) and a percentile bootstrap 95% interval
over studies (``training.eval.classification``).

Packages: by default the demo packages ``mammo-node models bootstrap-demo --config CONFIG``
installs (default configuration deploy/config/default.toml), found the way it finds them: shipped
in ``deploy/demo-models/NAME@VERSION/`` for the current ``export.bootstrap.DEMO_VERSION``, else
its build cache ``DATA_DIR/cache/bootstrap-demo/packages/`` (``var/cache/bootstrap-demo`` for the
default configuration), else installed in that node's registry, else built into that cache now
through the same code path (``python -m export.bootstrap --out CACHE``, minutes on 2 cores,
resumable), so ``make run`` reuses them afterwards. A REF (``NAME@VERSION``) is looked up in the
same places. The JSON records each package's ref, path and source.

The default seed, 20261207, is reserved for this bench: NEVER train on it (training uses seeds
0, 1 and other small integers), or the figures stop being held out.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "deploy" / "config" / "default.toml"
# Reserved for this bench: never use it to train (training uses 0, 1 and small integers).
BENCH_SEED = 20261207
SIDES = ("R", "L")
DENSITIES = ("A", "B", "C", "D")
BIRADS = ("0", "1", "2", "3", "4", "5")  # 4A/4B/4C merged into 4, as the classifier's head
SUSPICIOUS = frozenset({"4A", "4B", "4C", "5"})
REPORT_KINDS = ("mass", "calcification")  # phantom finding kinds the report parser also names
PRESENT = frozenset({"POS", "UNC"})
SETTLE = 0.5  # seconds, as the node tests use


# ----------------------------------------------------------------------------------- scoring

def _index(value: Any, classes: Sequence[str]) -> int:
    """Class index of a density or BI-RADS value (BI-RADS 4A/4B/4C -> 4); -1 for none or anything else."""
    if value is None:
        return -1
    text = str(value).strip().upper()
    if classes == BIRADS:
        text = text[:1]
    return classes.index(text) if text in classes else -1


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def recall(truth: np.ndarray, pred: np.ndarray) -> float:
    positives = int(truth.sum())
    return float((truth & pred).sum() / positives) if positives else float("nan")


def precision(truth: np.ndarray, pred: np.ndarray) -> float:
    called = int(pred.sum())
    return float((truth & pred).sum() / called) if called else float("nan")


def breast_rows(results: Sequence[dict[str, Any] | None], labels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row per breast of every scored study (a study whose result is None, e.g. FAILED, is
    skipped); arrays keyed by what is compared, plus ``study`` (index among the scored studies)."""
    if len(results) != len(labels):
        raise ValueError(f"{len(results)} results for {len(labels)} label files")
    rows: dict[str, list[Any]] = {k: [] for k in (
        "study", "density_true", "density_reported", "density_classifier", "birads_true", "birads_reported",
        "birads_classifier", "lesion_true", "suspicious_true", "lesion_score", "suspicious_score")}
    for kind in REPORT_KINDS:
        rows[f"{kind}_true"], rows[f"{kind}_reported"] = [], []
    scored = 0
    for result, label in zip(results, labels):
        if not result or not result.get("breasts"):
            continue
        for side in SIDES:
            truth = label["breasts"][side]
            breast = result["breasts"].get(side) or {}
            classifier = breast.get("classifier") or {}
            probs = classifier.get("birads_probabilities") or {}
            rows["study"].append(scored)
            rows["density_true"].append(_index(truth["density"], DENSITIES))
            rows["density_reported"].append(_index(breast.get("density"), DENSITIES))
            rows["density_classifier"].append(_index(classifier.get("density"), DENSITIES))
            rows["birads_true"].append(_index(truth["birads"], BIRADS))
            rows["birads_reported"].append(_index(breast.get("birads"), BIRADS))
            rows["birads_classifier"].append(_index(classifier.get("birads"), BIRADS))
            rows["lesion_true"].append(str(truth["birads"]) != "1")
            rows["suspicious_true"].append(str(truth["birads"]).upper() in SUSPICIOUS)
            rows["lesion_score"].append(1.0 - float(probs["1"]) if probs else float("nan"))
            rows["suspicious_score"].append(float(probs.get("4", 0.0)) + float(probs.get("5", 0.0))
                                            if probs else float("nan"))
            named = {f.get("kind") for f in breast.get("findings") or [] if f.get("status", "POS") in PRESENT}
            truth_kinds = {f.get("kind") for f in truth.get("findings") or []}
            for kind in REPORT_KINDS:
                rows[f"{kind}_true"].append(kind in truth_kinds)
                rows[f"{kind}_reported"].append(kind in named)
        scored += 1
    out: dict[str, Any] = {}
    for key, values in rows.items():
        if key.endswith("_score"):
            out[key] = np.asarray(values, dtype=np.float64)
        elif key.startswith(("density_", "birads_")) or key == "study":
            out[key] = np.asarray(values, dtype=np.int64)
        else:
            out[key] = np.asarray(values, dtype=bool)
    out["n_studies"] = scored
    return out


def _estimate(metric: Callable[[np.ndarray], float], by_study: list[np.ndarray], resamples: int,
              seed: int) -> dict[str, Any]:
    """``metric(breast indices)`` on all breasts, with a bootstrap 95% interval over studies."""
    from training.eval.classification import bootstrap

    def on_studies(studies: np.ndarray) -> float:
        idx = np.concatenate([by_study[s] for s in studies]) if len(studies) else np.zeros(0, dtype=np.int64)
        return metric(idx)

    return bootstrap(on_studies, len(by_study), resamples, seed).to_dict()


def _counts(values: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    counts = {c: int((values == i).sum()) for i, c in enumerate(classes)}
    missing = int((values < 0).sum())
    if missing:
        counts["none"] = missing
    return counts


def _classes(name: str, rows: dict[str, Any], by_study: list[np.ndarray], resamples: int,
             seed: int) -> dict[str, Any]:
    from training.eval.classification import accuracy, macro_f1

    classes = DENSITIES if name == "density" else BIRADS
    truth = rows[f"{name}_true"]
    out: dict[str, Any] = {"n": int(len(truth)), "truth_counts": _counts(truth, classes)}
    for source in ("reported", "classifier"):
        pred = rows[f"{name}_{source}"]
        out[source] = {
            "accuracy": _estimate(lambda i, p=pred: accuracy(truth[i], p[i]), by_study, resamples, seed),
            "macro_f1": _estimate(lambda i, p=pred: macro_f1(truth[i], p[i], len(classes)), by_study, resamples,
                                  seed),
            "counts": _counts(pred, classes),
        }
    known = truth[truth >= 0]
    majority = int(np.bincount(known, minlength=len(classes)).argmax()) if len(known) else 0
    constant = np.full_like(truth, majority)
    out["baseline"] = {"majority_class": classes[majority], "accuracy": accuracy(truth, constant),
                       "macro_f1": macro_f1(truth, constant, len(classes))}
    return out


def _auc(name: str, rows: dict[str, Any], by_study: list[np.ndarray], resamples: int, seed: int) -> dict[str, Any]:
    from training.eval.classification import binary_auc

    truth, score = rows[f"{name}_true"], rows[f"{name}_score"]
    keep = ~np.isnan(score)

    def metric(i: np.ndarray) -> float:
        i = i[keep[i]]
        return binary_auc(truth[i], score[i])

    return {**_estimate(metric, by_study, resamples, seed), "positives": int(truth[keep].sum()),
            "negatives": int((~truth[keep]).sum()), "baseline": 0.5}


def _report_finding(kind: str, rows: dict[str, Any], by_study: list[np.ndarray], resamples: int,
                    seed: int) -> dict[str, Any]:
    truth, pred = rows[f"{kind}_true"], rows[f"{kind}_reported"]
    prevalence = float(truth.mean()) if len(truth) else float("nan")
    return {
        "recall": _estimate(lambda i: recall(truth[i], pred[i]), by_study, resamples, seed),
        "precision": _estimate(lambda i: precision(truth[i], pred[i]), by_study, resamples, seed),
        "truth_positive": int(truth.sum()), "reported_positive": int(pred.sum()),
        "true_positive": int((truth & pred).sum()),
        "baseline_always": {"recall": 1.0 if truth.any() else float("nan"), "precision": prevalence},
        "baseline_never": {"recall": 0.0 if truth.any() else float("nan"), "precision": float("nan")},
    }


def report_variety(results: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    texts = [(r.get("report") or {}).get("text") or "" for r in results if r and r.get("breasts")]
    counts = Counter(texts)
    return {"studies": len(texts), "distinct_texts": len(counts),
            "most_repeated_count": max(counts.values()) if counts else 0,
            "baseline": {"distinct_texts": 1 if texts else 0, "most_repeated_count": len(texts)}}


def score(results: Sequence[dict[str, Any] | None], labels: Sequence[dict[str, Any]], resamples: int = 1000,
          seed: int = 0) -> dict[str, Any]:
    """Score structured results (the ``result`` of ``studies show --json``; None for a study without
    one) against their labels.json, per breast. NaN where a figure is undefined (no positives)."""
    rows = breast_rows(results, labels)
    by_study = [np.flatnonzero(rows["study"] == s) for s in range(rows["n_studies"])]
    return {
        "n_studies": len(labels), "n_scored_studies": rows["n_studies"], "n_breasts": int(len(rows["study"])),
        "unscored_studies": len(labels) - rows["n_studies"],
        "density": _classes("density", rows, by_study, resamples, seed),
        "birads": _classes("birads", rows, by_study, resamples, seed),
        "lesion_auc": _auc("lesion", rows, by_study, resamples, seed),
        "suspicious_auc": _auc("suspicious", rows, by_study, resamples, seed),
        "report_findings": {k: _report_finding(k, rows, by_study, resamples, seed) for k in REPORT_KINDS},
        "report_varies": report_variety(results),
        "bootstrap": {"resamples": resamples, "seed": seed, "unit": "study", "interval": "percentile 95%"},
    }


# ------------------------------------------------------------------------------- presentation

def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(estimate: dict[str, Any]) -> str:
    low, high = estimate.get("ci95") or (None, None)
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return ""
    return f"[{low:.3f}, {high:.3f}]"


def table_rows(scores: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(metric, value, 95% CI, baseline, note) rows of the printed table."""
    out = []
    for name, label in (("density", "density"), ("birads", "BI-RADS (0-5, 4A/B/C=4)")):
        block = scores[name]
        base = block["baseline"]
        for source in ("reported", "classifier"):
            for metric in ("accuracy", "macro_f1"):
                est = block[source][metric]
                out.append((f"{label} {metric.replace('_', '-')}, {source}", _fmt(est["value"]), _ci(est),
                            _fmt(base[metric]), f"majority {base['majority_class']}"))
        counts = ", ".join(f"{k}:{v}" for k, v in block["reported"]["counts"].items() if v)
        out.append((f"{label}: reported counts", counts, "", "", f"n={block['n']} breasts"))
        counts = ", ".join(f"{k}:{v}" for k, v in block["classifier"]["counts"].items() if v)
        out.append((f"{label}: classifier counts", counts, "", "", ""))
        truth = ", ".join(f"{k}:{v}" for k, v in block["truth_counts"].items() if v)
        out.append((f"{label}: truth counts", truth, "", "", ""))
    for name, label in (("lesion_auc", "lesion AUC (1 - P(BI-RADS 1))"), ("suspicious_auc", "suspicious AUC (P4 + P5)")):
        est = scores[name]
        out.append((label, _fmt(est["value"]), _ci(est), "0.500", f"{est['positives']} pos / {est['negatives']} neg"))
    for kind, block in scores["report_findings"].items():
        always, never = block["baseline_always"], block["baseline_never"]
        note = f"{block['true_positive']} hit, {block['truth_positive']} true, {block['reported_positive']} named"
        out.append((f"report names {kind}: recall", _fmt(block["recall"]["value"]), _ci(block["recall"]),
                    f"always {_fmt(always['recall'])} / never {_fmt(never['recall'])}", note))
        out.append((f"report names {kind}: precision", _fmt(block["precision"]["value"]), _ci(block["precision"]),
                    f"always {_fmt(always['precision'])} / never -", ""))
    varies = scores["report_varies"]
    out.append(("report varies: distinct texts", str(varies["distinct_texts"]), "",
                str(varies["baseline"]["distinct_texts"]), f"of {varies['studies']} studies"))
    out.append(("report varies: most repeated text", str(varies["most_repeated_count"]), "",
                str(varies["baseline"]["most_repeated_count"]), "times"))
    return out


def print_table(doc: dict[str, Any], file: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, width=160)
    scores = doc["scores"]
    models = ", ".join(f"{k} {v['ref']}" for k, v in doc["packages"].items())
    title = (f"demo quality: {scores['n_scored_studies']}/{scores['n_studies']} studies scored "
             f"({scores['n_breasts']} breasts), seed {doc['seed']}, {models}")
    table = Table(title=title)
    for column in ("metric", "node", "95% CI (studies)", "baseline", "note"):
        table.add_column(column)
    for row in table_rows(scores):
        table.add_row(*row)
    console.print(table)
    states = ", ".join(f"{k} {v}" for k, v in doc["states"].items())
    console.print(f"states: {states}; wall {doc['wall_seconds']['total']:.0f} s "
                  f"(processing median {_fmt(doc['processing_seconds']['median'], 2)} s/study); "
                  f"{doc['machine']['cpu_count']} CPUs, {doc['machine']['platform']}", highlight=False)
    for failed in doc["failed"]:
        console.print(f"[red]{failed['key']} {failed['state']}: {failed['reason']}[/red]", highlight=False)


# ------------------------------------------------------------------------------- the node run

def _log(message: str) -> None:
    print(f"[demo-quality] {message}", file=sys.stderr, flush=True)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_NODE_")}


def _cli(config: Path, *args: str, timeout: float = 600, check: bool = True) -> Any:
    """``mammo-node ARGS --config CONFIG --json`` with this interpreter; its parsed JSON output."""
    proc = subprocess.run([sys.executable, "-m", "node.cli.app", *args, "--config", str(config), "--json"],
                          capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)
    if check and proc.returncode != 0:
        raise RuntimeError(f"mammo-node {' '.join(args)} exited {proc.returncode}: "
                           f"{(proc.stdout + proc.stderr)[-2000:]}")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def _bootstrap_cache(config: Path) -> Path:
    """Where ``mammo-node models bootstrap-demo --config CONFIG`` keeps its runs and packages (its
    ``--cache`` default; a relative data_dir is taken from the repository root, as `make run` runs)."""
    return _data_dir(config) / "cache" / "bootstrap-demo"


def _data_dir(config: Path) -> Path:
    from node.config import load_settings

    data_dir = load_settings(config).node.data_dir
    return data_dir if data_dir.is_absolute() else ROOT / data_dir


def _shipped_demo() -> dict[str, Path] | None:
    """The demo packages shipped in the repository for the current DEMO_VERSION, where this
    checkout has them (node.packages.demo, what bootstrap-demo installs first)."""
    try:
        from node.packages.demo import shipped_packages
    except ImportError:  # a checkout from before shipped demo packages
        return None
    return shipped_packages()


def demo_packages(config: Path, threads: int | None = None) -> tuple[dict[str, Path], str]:
    """The packages ``mammo-node models bootstrap-demo --config CONFIG`` installs, and where they came
    from: shipped in deploy/demo-models/, else its build cache, else installed in that node's registry,
    else built into its cache now through the same code path (``python -m export.bootstrap``)."""
    from export.bootstrap import NAMES, package_dir

    shipped = _shipped_demo()
    if shipped:
        return shipped, "shipped"
    cache = _bootstrap_cache(config)
    done = {kind: package_dir(cache, kind) for kind in NAMES}
    if all((p / "manifest.json").is_file() for p in done.values()):
        return done, "cached"
    registry = {kind: _data_dir(config) / "models" / "packages" / p.name for kind, p in done.items()}
    if all((p / "manifest.json").is_file() for p in registry.values()):
        return registry, "registry"
    _log(f"demo packages not built yet: building them in {cache} (python -m export.bootstrap; "
         "minutes on 2 cores, resumable)")
    command = [sys.executable, "-m", "export.bootstrap", "--out", str(cache)]
    if threads:
        command += ["--threads", str(threads)]
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                          env=dict(_env(), PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"building the demo packages failed (exit {proc.returncode}); rerun to resume")
    return {kind: Path(p) for kind, p in json.loads(proc.stdout.strip().splitlines()[-1]).items()}, "built"


def resolve_package(value: str, config: Path) -> Path:
    """A package directory (or .tar) as given, or a NAME@VERSION from the configuration's registry
    or the bootstrap-demo cache."""
    path = Path(value)
    if path.exists():
        return path.resolve()
    if "@" in value:
        shipped = [p for p in (_shipped_demo() or {}).values() if p.name == value]
        for candidate in (*shipped, _data_dir(config) / "models" / "packages" / value,
                          _bootstrap_cache(config) / "packages" / value):
            if (candidate / "manifest.json").is_file():
                return candidate
    raise SystemExit(f"no package directory or installed/cached package {value!r}")


def _kind_of(path: Path) -> str:
    import tarfile

    if path.is_dir():
        return json.loads((path / "manifest.json").read_text())["kind"]
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if Path(m.name).name == "manifest.json")
        return json.loads(tar.extractfile(member).read())["kind"]


def choose_packages(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, str]]:
    """``{kind: package path}`` and ``{kind: where it came from}`` (given, shipped, cached, registry, built)."""
    sources: dict[str, str] = {}
    if args.packages:
        packages: dict[str, Path] = {}
        for value in args.packages:
            path = resolve_package(value, args.config)
            kind = _kind_of(path)
            if kind in packages:
                raise SystemExit(f"two {kind} packages given: {packages[kind]} and {path}")
            packages[kind] = path
    else:
        packages = {}
        if args.versamammo:
            packages["versamammo"] = resolve_package(args.versamammo, args.config)
        if args.mammorg:
            packages["mammorg"] = resolve_package(args.mammorg, args.config)
        if len(packages) < 2:
            demo, source = demo_packages(args.config, args.threads)
            for kind, path in demo.items():
                if kind not in packages:
                    packages[kind], sources[kind] = path, f"bootstrap-demo ({source})"
    missing = {"versamammo", "mammorg"} - set(packages)
    if missing:
        raise SystemExit(f"no {' or '.join(sorted(missing))} package given")
    for kind, path in packages.items():
        if _kind_of(path) != kind:
            raise SystemExit(f"{path} is not a {kind} package")
    return packages, {kind: sources.get(kind, "given") for kind in packages}


def _failure_reason(show: dict[str, Any]) -> str:
    events = [e for e in show.get("events") or [] if e.get("to_state") == show.get("state")]
    return (events[-1].get("reason") or "") if events else ""


def run_node(studies: list[Path], packages: dict[str, Path], workdir: Path,
             timeout: float) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, float]]:
    """Start a node, install + activate the packages, send the studies, wait, read every result.

    Returns (``studies show --json`` per study, in ``studies`` order; ``models list --json``; timings)."""
    from bench.ingest import Node  # the project's `mammo-node serve` on a fresh data dir and a free port

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    node = Node(workdir, settle=SETTLE)
    config = workdir / "node.toml"
    try:
        for kind, path in packages.items():
            _log(f"installing {kind} package {path} (golden vectors run here)")
            _cli(config, "models", "install", str(path), "--activate")
        models = _cli(config, "models", "list")
        times["start_install"] = time.perf_counter() - t0
        uids = [json.loads((s / "labels.json").read_text())["study_uid"] for s in studies]
        t1 = time.perf_counter()
        sent = _cli(config, "send", "127.0.0.1", str(node.port), *map(str, studies), "--aec", "MAMMO_NODE",
                    check=False)
        if not sent or sent.get("failed"):
            raise RuntimeError(f"send failed: {json.dumps(sent)[:2000]}")
        times["send"] = time.perf_counter() - t1
        _log(f"sent {sent['sent']} images; waiting for {len(uids)} studies")
        deadline, last = time.monotonic() + timeout, None
        while True:
            if node.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {node.proc.returncode}")
            listed = _cli(config, "studies", "list", "--limit", str(len(uids) + 50), check=False) or []
            states = {s["study_uid"]: s["state"] for s in listed}
            finished = sum(states.get(u) in ("DONE", "FAILED") for u in uids)
            if finished != last:
                _log(f"{finished}/{len(uids)} studies DONE or FAILED")
                last = finished
            if finished == len(uids):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s: "
                                   f"{dict(Counter(states.get(u, 'not received') for u in uids))}")
            time.sleep(2.0)
        times["process"] = time.perf_counter() - t1 - times["send"]
        t2 = time.perf_counter()
        shows = [_cli(config, "studies", "show", uid) for uid in uids]
        times["read_results"] = time.perf_counter() - t2
        return shows, models, times
    finally:
        node.stop()


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import phantoms.study as phantom

    start = time.perf_counter()
    packages, sources = choose_packages(args)
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="demo-quality-") as tmp:
        workdir = Path(tmp)
        t = time.perf_counter()
        _log(f"generating {args.studies} small phantom studies, seed {args.seed}")
        studies = phantom.write_phantom_studies(workdir / "phantoms", args.studies, args.seed,
                                                phantom.PhantomOptions(size="small"))
        labels = [json.loads((s / "labels.json").read_text()) for s in studies]
        generate_s = time.perf_counter() - t
        shows, models, times = run_node(studies, packages, workdir, args.timeout or 120 + 30 * args.studies)
    results = [s.get("result") if s.get("state") == "DONE" else None for s in shows]
    scores = score(results, labels, resamples=args.bootstrap)
    listed = {p["ref"]: p for p in (models or {}).get("packages", [])}
    active = (models or {}).get("active", {})
    seconds = [float(r["seconds"]) for r in results if r and r.get("seconds") is not None]
    return _nan_to_none({
        "bench": "demo_quality",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "studies": args.studies, "seed": args.seed,
        "phantom": {"version": getattr(phantom, "PHANTOM_VERSION", None), "size": "small",
                    "labels_version": labels[0].get("phantom_version") if labels else None},
        "packages": {kind: {"ref": active.get(kind), "path": str(packages[kind]), "source": sources[kind],
                            "version": (listed.get(active.get(kind)) or {}).get("version"),
                            "created": (listed.get(active.get(kind)) or {}).get("created"),
                            "demonstration": (listed.get(active.get(kind)) or {}).get("demonstration")}
                     for kind in ("versamammo", "mammorg")},
        "machine": _machine(),
        "states": dict(Counter(s.get("state") for s in shows)),
        "failed": [{"key": s.get("key"), "study_uid": s.get("study_uid"), "state": s.get("state"),
                    "reason": _failure_reason(s)} for s in shows if s.get("state") != "DONE"],
        "processing_seconds": {"median": float(np.median(seconds)) if seconds else None,
                               "total": float(sum(seconds))},
        "wall_seconds": {"packages": build_s, "generate": generate_s, **times,
                         "total": time.perf_counter() - start},
        "scores": scores,
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", nargs="+", metavar="DIR", help="the two package directories (or .tar "
                        "or NAME@VERSION); kinds are read from their manifests")
    parser.add_argument("--versamammo", metavar="REF|DIR", help="VersaMammo package (default: the demo one)")
    parser.add_argument("--mammorg", metavar="REF|DIR", help="MammoRG package (default: the demo one)")
    parser.add_argument("--studies", type=int, default=40, help="phantom studies (default 40: two case-mix blocks)")
    parser.add_argument("--seed", type=int, default=BENCH_SEED,
                        help=f"phantom seed (default {BENCH_SEED}, reserved for this bench: never train on it)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over studies (0: none)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="configuration whose bootstrap-demo cache / registry holds the default or named packages")
    parser.add_argument("--threads", type=int, default=None, help="torch threads if the demo packages are built")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the studies "
                        "(default 120 + 30 per study)")
    parser.add_argument("--json", action="store_true", help="print one JSON document (the table goes to stderr)")
    parser.add_argument("--out", type=Path, help="also write the JSON document here")
    args = parser.parse_args(argv)
    if args.packages and (args.versamammo or args.mammorg):
        parser.error("--packages or --versamammo/--mammorg, not both")
    if args.studies < 1:
        parser.error("--studies must be at least 1")
    doc = run(args)
    text = json.dumps(doc, indent=2, sort_keys=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        print_table(doc, file=sys.stderr)
        print(text)
    else:
        print_table(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
