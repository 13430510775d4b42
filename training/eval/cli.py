"""``mammo-eval``: score generated mammography reports and inspect what the parser extracts.

Input files are JSON Lines, one ``{"id": ..., "text": ...}`` object per line (blank lines are
skipped; ids are strings or integers and are compared as text). Errors in the input (a line
that is not such an object, a duplicate id, ids present on one side only) print a message
naming the file and line and exit with status 2.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="mammo-eval: evaluate generated mammography reports (clinical efficacy, BLEU, ROUGE-L).",
                  no_args_is_help=True, add_completion=False)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


class InputError(Exception):
    """Bad input file; the message is shown as is."""


def read_reports(path: Path) -> list[tuple[Any, str]]:
    """(id, text) pairs of a JSON Lines file, in file order; :class:`InputError` on any problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    items: list[tuple[Any, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected an object {{\"id\": ..., \"text\": ...}}, got {type(obj).__name__}")
        if "id" not in obj or "text" not in obj:
            missing = " and ".join(k for k in ("id", "text") if k not in obj)
            raise InputError(f"{where}: missing {missing}")
        report_id, text = obj["id"], obj["text"]
        if isinstance(report_id, bool) or not isinstance(report_id, (str, int)):
            raise InputError(f"{where}: id must be a string or an integer, got {json.dumps(report_id)}")
        if not isinstance(text, str):
            raise InputError(f"{where}: text must be a string, got {type(text).__name__}")
        key = str(report_id)
        if key in seen:
            raise InputError(f"{where}: duplicate id {key!r} (first on line {seen[key]})")
        seen[key] = number
        items.append((report_id, text))
    if not items:
        raise InputError(f"{path}: no reports")
    return items


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _load_parser() -> Callable[..., Any]:
    try:
        from models.report.parse import parse_report
    except ImportError as exc:
        _fail(f"the report parser (models.report.parse) is not available: {exc}", code=1)
    return parse_report


def _json_safe(value: Any) -> Any:
    """NaN/inf (undefined metrics, missing intervals) become null so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _print_metrics(result: dict[str, Any]) -> None:
    from training.eval.report_metrics import BASELINES, METRICS

    boot = result["bootstrap"]
    table = Table(title=f"Report metrics ({result['n_reports']} reports; 95% CI: {boot['resamples']} "
                        f"bootstrap resamples of reports, seed {boot['seed']})")
    for column in ("metric", "value", "95% CI", "definition"):
        table.add_column(column, justify="right" if column in ("value", "95% CI") else "left")

    def add(name: str, entry: dict[str, Any], definition: str) -> None:
        digits = 2 if name.startswith("bleu") else 4
        low, high = entry["ci95"]
        table.add_row(name, _fmt(entry["value"], digits), f"{_fmt(low, digits)} - {_fmt(high, digits)}", definition)

    for name, definition in METRICS.items():
        add(name, result["metrics"][name], definition)
    table.add_section()
    for name, definition in BASELINES.items():
        entry = result["baselines"][name]
        add(name, entry, f"{definition} ({entry['class']})")
    out.print(table)
    counts = Table(title="Counts")
    counts.add_column("count")
    counts.add_column("value", justify="right")
    for key, value in result["counts"].items():
        counts.add_row(key, str(value))
    out.print(counts)


@app.command("reports")
def reports(
    pred: Path = typer.Option(..., "--pred", help="Generated reports, JSON Lines of {\"id\", \"text\"}."),
    ref: Path = typer.Option(..., "--ref", help="Reference reports, JSON Lines of {\"id\", \"text\"}."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with every metric and its ci95."),
    resamples: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples of reports (0: no intervals)."),
    seed: int = typer.Option(42, "--seed", help="Bootstrap seed."),
) -> None:
    """Score generated reports against references matched by id.

    Clinical efficacy on the parsed reports, BLEU-1/4 and ROUGE-L on the texts,
    each with a bootstrap 95% interval over resampled reports (docs/report-metrics.md).
    """
    from training.eval.report_metrics import ReportIdMismatch, ReportParseError, evaluate_reports

    try:
        pred_items, ref_items = read_reports(pred), read_reports(ref)
    except InputError as exc:
        _fail(str(exc))
    pred_texts = {str(i): t for i, t in pred_items}
    ref_texts = {str(i): t for i, t in ref_items}
    parser = _load_parser() if pred_texts.keys() == ref_texts.keys() else None  # else: the id error first
    try:
        result = evaluate_reports(pred_texts, ref_texts, resamples=resamples, seed=seed, parse=parser)
    except ReportIdMismatch as exc:
        _fail(f"--pred {pred} and --ref {ref} do not have the same ids: {exc}")
    except ReportParseError as exc:
        _fail(str(exc), code=1)
    if as_json:
        sys.stdout.write(json.dumps(_json_safe(result), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    else:
        _print_metrics(result)


@app.command("vindr-reports")
def vindr_reports(
    pred: Path = typer.Option(..., "--pred", help="Generated reports, JSON Lines of {\"id\": VinDr study_id, \"text\"}."),
    vindr: Path = typer.Option(..., "--vindr", help="VinDr-Mammo root (breast-level_annotations.csv)."),
    mapping: str = typer.Option("strict", "--birads-mapping",
                                help="strict (ours), official (lenient, tool_clslabel.py) or official_as_coded."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    resamples: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples of studies (0: no intervals)."),
    seed: int = typer.Option(42, "--seed", help="Bootstrap seed."),
) -> None:
    """Score generated reports against VinDr-Mammo's breast-level BI-RADS and density labels
    (no reference text; docs/report-metrics.md, "VinDr-Mammo labels")."""
    from training.eval.vindr_reports import BIRADS_MAPPINGS, evaluate_vindr_reports, vindr_breast_labels

    if mapping not in BIRADS_MAPPINGS:
        _fail(f"--birads-mapping must be one of {', '.join(BIRADS_MAPPINGS)}, not {mapping!r}")
    try:
        items = read_reports(pred)
    except InputError as exc:
        _fail(str(exc))
    if not (vindr / "breast-level_annotations.csv").is_file():
        _fail(f"--vindr {vindr}: no breast-level_annotations.csv")
    labels = vindr_breast_labels(vindr)
    texts = {str(i): t for i, t in items}
    unknown = sorted(i for i in texts if (i, "R") not in labels and (i, "L") not in labels)
    if unknown:
        _fail(f"--pred {pred}: study ids not in {vindr}: {', '.join(unknown[:5])}")
    result = evaluate_vindr_reports(texts, labels, mapping, resamples=resamples, seed=seed, parse=_load_parser())
    if as_json:
        sys.stdout.write(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")
        return
    table = Table(title=f"{result['studies']} studies, BI-RADS mapping {mapping}")
    for column in ("field", "metric", "value", "95% interval"):
        table.add_column(column)
    for field_name in ("birads", "density"):
        for metric in ("f1", "completeness", "accuracy"):
            value = result[field_name][metric]
            table.add_row(field_name, metric, _fmt(value["value"], 3),
                          f"{_fmt(value['ci95'][0], 3)} - {_fmt(value['ci95'][1], 3)}")
    out.print(table)


@app.command("parse")
def parse(
    file: Path = typer.Argument(..., help="Reports, JSON Lines of {\"id\", \"text\"}."),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines: one {\"id\", \"breasts\", \"relations\", ...} per input line."),
) -> None:
    """Show what the parser extracts from each report: density (A-D), BI-RADS, findings, relations."""
    try:
        items = read_reports(file)
    except InputError as exc:
        _fail(str(exc))
    parse_report = _load_parser()
    for report_id, text in items:
        try:
            result = parse_report(text)
        except Exception as exc:  # noqa: BLE001 - report which line broke the parser
            _fail(f"parsing report {report_id!r} failed: {type(exc).__name__}: {exc}", code=1)
        if as_json:
            sys.stdout.write(json.dumps({"id": report_id, **result.to_dict()}, ensure_ascii=False) + "\n")
            continue
        table = Table(title=escape(f"report {report_id}"), title_justify="left")
        for column in ("side", "density", "BI-RADS", "findings (not BLANK)"):
            table.add_column(column)
        for side, breast in result.breasts.items():
            findings = []
            for kind, finding in breast.findings.items():
                if finding.status == "BLANK":
                    continue
                extra = ", ".join(finding.locations + finding.descriptors)
                findings.append(f"{kind}: {finding.status}" + (f" ({extra})" if extra else ""))
            table.add_row(side, breast.density or "-", breast.birads or "-", escape("\n".join(findings)) or "-")
        out.print(table)
        if result.relations:
            for head, relation, tail in result.relations:
                out.print(f"  {head} --{relation}--> {tail}", markup=False)
        else:
            out.print("  no relations")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
