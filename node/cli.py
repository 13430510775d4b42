"""``mammo-node``: the administrator's command line.

Every command takes ``--config FILE`` (TOML; environment overrides apply) and the listing
commands take ``--json`` for scripts. Exit codes: 0 success, 1 the operation failed (e.g.
a C-STORE was refused), 2 bad usage or configuration.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from node.config import ConfigError, Settings, load_settings

app = typer.Typer(help="mammo-node: DICOM node for four-view screening mammography AI.",
                  no_args_is_help=True, add_completion=False)
studies_app = typer.Typer(help="Inspect received studies.", no_args_is_help=True)
config_app = typer.Typer(help="Check the configuration.", no_args_is_help=True)
app.add_typer(studies_app, name="studies")
app.add_typer(config_app, name="config")


def _add_models_app() -> None:
    from node.cli_models import models_app

    app.add_typer(models_app, name="models")
    from node.cli_outbox import outbox_app

    app.add_typer(outbox_app, name="outbox")

console = Console()
err_console = Console(stderr=True)

ConfigOption = typer.Option(None, "--config", "-c", help="TOML configuration file.", exists=False)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")


def _settings(config: Optional[Path]) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _t(value: Any) -> str:
    """A value that came from a data set (or a peer), escaped for rich markup: an AccessionNumber
    of "[/bold]" must print as such, not break the table for every study."""
    from rich.markup import escape

    return escape("" if value is None else str(value))


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _setup_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(name)s: %(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=True)])
    # Library chatter stays out of the node log (pynetdicom can log dataset contents).
    for name in ("pynetdicom", "apscheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ----- serve -------------------------------------------------------------------------------------

@app.command()
def serve(config: Optional[Path] = ConfigOption) -> None:
    """Run the node: receive, journal and assemble studies until stopped (Ctrl-C / SIGTERM)."""
    settings = _settings(config)
    _setup_logging(settings.node.log_level)
    from node.app import NodeApp

    node = NodeApp(settings)
    try:
        node.start()
    except OSError as exc:
        err_console.print(f"[red]cannot start: {exc}[/red]")
        node.stop()
        raise typer.Exit(1)

    def _stop(signum: int, _frame: Any) -> None:
        logging.getLogger("mammo_node").info("received signal %d, stopping", signum)
        node.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.wait()


# ----- echo / send -------------------------------------------------------------------------------

def _tls_options(ca: Optional[Path], cert: Optional[Path], key: Optional[Path], tls: bool):
    from node.dicom.scu import TLSClientOptions

    if not (tls or ca or cert or key):
        return None
    return TLSClientOptions(ca=ca, cert=cert, key=key)


@app.command()
def echo(
    host: str = typer.Argument(..., help="Peer host."),
    port: int = typer.Argument(..., help="Peer port."),
    aet: str = typer.Option("MAMMO_NODE_SCU", "--aet", help="Our (calling) AE title."),
    aec: str = typer.Option("ANY-SCP", "--aec", help="The peer's (called) AE title."),
    tls: bool = typer.Option(False, "--tls", help="Use TLS."),
    tls_ca: Optional[Path] = typer.Option(None, "--tls-ca", help="CA certificate to verify the peer."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="Our client certificate."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="Our client key."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the peer."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """Check that a DICOM peer answers (C-ECHO)."""
    from node.dicom.scu import echo as do_echo

    ok, message = do_echo(host, port, aet, aec, timeout, _tls_options(tls_ca, tls_cert, tls_key, tls))
    if as_json:
        _print_json({"ok": ok, "message": message, "host": host, "port": port})
    else:
        console.print(("[green]" if ok else "[red]") + f"{host}:{port} {message}")
    raise typer.Exit(0 if ok else 1)


@app.command()
def send(
    host: str = typer.Argument(..., help="Peer host."),
    port: int = typer.Argument(..., help="Peer port."),
    paths: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
    aet: str = typer.Option("MAMMO_NODE_SCU", "--aet", help="Our (calling) AE title."),
    aec: str = typer.Option("ANY-SCP", "--aec", help="The peer's (called) AE title."),
    tls: bool = typer.Option(False, "--tls", help="Use TLS."),
    tls_ca: Optional[Path] = typer.Option(None, "--tls-ca", help="CA certificate to verify the peer."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="Our client certificate."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="Our client key."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for the peer."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """Send DICOM files to a peer (C-STORE), with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from node.dicom.scu import collect_files, send as do_send

    files = collect_files(paths)
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        err_console.print(f"[red]no such file: {', '.join(missing)}[/red]")
        raise typer.Exit(2)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err_console, disable=as_json or not err_console.is_terminal) as bar:
        task = bar.add_task(f"C-STORE to {host}:{port}", total=len(files))
        results = do_send(host, port, files, aet, aec, timeout, _tls_options(tls_ca, tls_cert, tls_key, tls),
                          progress=lambda _r: bar.advance(task))
    failed = [r for r in results if not r.ok]
    if as_json:
        _print_json({"sent": len(results) - len(failed), "failed": len(failed),
                     "results": [{"path": r.path, "status": r.status, "comment": r.comment} for r in results]})
    else:
        for r in failed:
            status = "not sent" if r.status is None else f"0x{r.status:04X}"
            console.print(f"[red]{_t(r.path)}: {status} {_t(r.comment)}[/red]", highlight=False)
        console.print(f"{len(results) - len(failed)} of {len(results)} file(s) stored at {host}:{port}")
    raise typer.Exit(1 if failed else 0)


# ----- studies -----------------------------------------------------------------------------------

def _journal(settings: Settings):
    from node.journal import Journal

    if not settings.journal_path.exists():
        err_console.print(f"no journal at {settings.journal_path} (has the node received anything?)")
        raise typer.Exit(1)
    return Journal(settings.journal_path)


@studies_app.command("list")
def studies_list(
    state: Optional[str] = typer.Option(None, "--state", help="Only studies in this state (e.g. COMPLETE)."),
    limit: int = typer.Option(200, "--limit", help="At most this many, newest first."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """List studies with their state, newest first."""
    from node.logref import study_key

    journal = _journal(_settings(config))
    studies = journal.list_studies(state=state.upper() if state else None, limit=limit)
    if as_json:
        _print_json([{
            "study_uid": s.study_uid, "key": study_key(s.study_uid), "state": s.state,
            "accession_number": s.accession_number, "instances": s.instance_count,
            "first_received_at": s.first_received_at, "last_received_at": s.last_received_at,
            "closed_at": s.closed_at, "close_reason": s.close_reason,
        } for s in studies])
        return
    table = Table(title=f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}")
    for column in ("key", "state", "accession", "images", "first received", "closed", "study UID"):
        table.add_column(column)
    for s in studies:
        table.add_row(study_key(s.study_uid), s.state, _t(s.accession_number or "-"), str(s.instance_count),
                      _when(s.first_received_at), _when(s.closed_at), _t(s.study_uid))
    console.print(table)


def _resolve_study(journal, ident: str) -> str:
    from node.logref import study_key

    matches = journal.find_studies(ident)
    if not matches and ident.startswith("s-"):
        matches = [s.study_uid for s in journal.list_studies() if study_key(s.study_uid) == ident]
    if len(matches) != 1:
        err_console.print(f"[red]{'no' if not matches else 'more than one'} study matches {_t(repr(ident))}[/red]")
        raise typer.Exit(1)
    return matches[0]


@studies_app.command("show")
def studies_show(
    uid: str = typer.Argument(..., help="Study Instance UID, a unique prefix of it, or its s-... key."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """Show one study: the four positions and why each instance was chosen, extras, state history."""
    from node.assembly import Assembler
    from node.logref import study_key

    settings = _settings(config)
    journal = _journal(settings)
    study_uid = _resolve_study(journal, uid)
    study = journal.get_study(study_uid, with_events=True)
    instances = journal.study_instances(study_uid)
    selection = study.selection or Assembler(journal, settings.assembly).selection(study_uid)
    data = {
        "study_uid": study.study_uid, "key": study_key(study.study_uid), "state": study.state,
        "patient_id": study.patient_id, "accession_number": study.accession_number,
        "first_received_at": study.first_received_at, "last_received_at": study.last_received_at,
        "four_views_at": study.four_views_at, "closed_at": study.closed_at,
        "close_reason": study.close_reason, "incomplete_policy": study.incomplete_policy,
        "selection": selection,
        "instances": [{
            "id": i.id, "sop_instance_uid": i.sop_instance_uid, "view": i.view.get("label"),
            "position": i.position, "sop_class_uid": i.sop_class_uid, "transfer_syntax": i.transfer_syntax,
            "size": i.size, "received_at": i.received_at, "calling_aet": i.calling_aet,
            "duplicate_of": i.duplicate_of, "after_close": i.after_close, "path": i.path,
            "view_detail": i.view,
        } for i in instances],
        "events": study.events,
        "result": journal.get_result(study_uid),
    }
    if as_json:
        _print_json(data)
        return
    console.print(f"[bold]Study[/bold] {_t(study.study_uid)} ({data['key']})  state [bold]{study.state}[/bold]")
    console.print(f"accession {_t(study.accession_number or '-')}  patient {_t(study.patient_id or '-')}  "
                  f"{len(instances)} instance(s)")
    if study.close_reason:
        console.print(f"closed {_when(study.closed_at)}: {_t(study.close_reason)}")
    views = Table(title="Four-view positions")
    for column in ("position", "SOP Instance UID", "why"):
        views.add_column(column)
    for position in ("R-CC", "R-MLO", "L-CC", "L-MLO"):
        chosen = selection["positions"].get(position)
        views.add_row(position, _t(chosen["sop_instance_uid"]) if chosen else "[red]missing[/red]",
                      _t(chosen["why"]) if chosen else "")
    console.print(views)
    if selection["extras"]:
        extras = Table(title="Other images (kept, not used)")
        for column in ("view", "SOP Instance UID", "why"):
            extras.add_column(column)
        for extra in selection["extras"]:
            extras.add_row(_t(extra["label"]), _t(extra["sop_instance_uid"]), _t(extra["why"]))
        console.print(extras)
    history = Table(title="State history")
    for column in ("at", "from", "to", "reason"):
        history.add_column(column)
    for event in study.events:
        history.add_row(_when(event["at"]), event["from_state"] or "-", event["to_state"], _t(event["reason"]))
    console.print(history)
    _print_result(data["result"])


def _print_result(result: dict[str, Any] | None) -> None:
    if not result:
        return
    if result.get("status") == "incomplete":
        console.print(f"result: incomplete study, missing {', '.join(result['missing_views'])}; no models run")
        return
    table = Table(title="Result (preliminary AI output, not verified)")
    for column in ("breast", "BI-RADS", "density", "findings", "classifier BI-RADS / density"):
        table.add_column(column)
    for side, b in result["breasts"].items():
        c = b.get("classifier") or {}
        findings = ", ".join(f"{f['kind']} ({f['status']})" for f in b["findings"]) or "-"
        table.add_row(side, str(b["birads"]), str(b["density"]), findings,
                      f"{c.get('birads', '-')} / {c.get('density', '-')}")
    console.print(table)
    for d in result["disagreements"]:
        console.print(f"[yellow]{d['breast']} {d['field']}: report {d['report']}, classifier {d['classifier']}[/yellow]")
    console.print(f"models: {', '.join(f'{k} {v}' for k, v in sorted(result['models'].items()))}")
    if result.get("report"):
        console.print(result["report"]["text"], highlight=False, markup=False)


@studies_app.command("retry")
def studies_retry(
    uid: str = typer.Argument(..., help="Study Instance UID, a unique prefix of it, or its s-... key."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """Process a FAILED (or DONE) study again, e.g. after fixing or replacing a model package.

    The study goes back to the state it was closed in; a running node takes it up within seconds
    and processes it with the models active then (its new result replaces the old one).
    """
    settings = _settings(config)
    journal = _journal(settings)
    study_uid = _resolve_study(journal, uid)
    study = journal.get_study(study_uid)
    if study.state not in ("FAILED", "DONE"):
        message = f"study is {study.state}; only FAILED or DONE studies can be retried"
        _print_json({"ok": False, "error": message}) if as_json else err_console.print(f"[red]{message}[/red]")
        raise typer.Exit(1)
    back = "COMPLETE" if study.four_views_at is not None else "INCOMPLETE"
    journal.transition(study_uid, study.state, back, "retry requested by an administrator")
    if as_json:
        _print_json({"ok": True, "study_uid": study_uid, "from": study.state, "to": back})
    else:
        console.print(f"{study_uid}: {study.state} -> {back}; a running node processes it again shortly")


# ----- status / config ---------------------------------------------------------------------------

def _runtime(settings: Settings) -> dict[str, Any] | None:
    from node.app import RUNTIME_FILE

    path = settings.data_dir / RUNTIME_FILE
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
        return info
    except (OSError, ValueError, KeyError):
        return None


@app.command()
def status(as_json: bool = JsonOption, config: Optional[Path] = ConfigOption) -> None:
    """Is the node running, and what does its journal hold?"""
    import shutil

    settings = _settings(config)
    runtime = _runtime(settings)
    data: dict[str, Any] = {"running": runtime is not None, "process": runtime, "data_dir": str(settings.data_dir)}
    if settings.journal_path.exists():
        from node.journal import Journal

        journal = Journal(settings.journal_path)
        data["studies"] = journal.state_counts()
        data.update(journal.counts())
        oldest = journal.list_studies(state="RECEIVING")
        data["oldest_receiving_age_s"] = round(time.time() - oldest[-1].first_received_at, 1) if oldest else None
        from node.outbox import OutboxQueue

        data["outbox"] = OutboxQueue(journal).depth()
    else:
        data["studies"], data["instances"], data["quarantined"], data["outbox"] = {}, 0, 0, {}
    from node.packages.registry import ModelRegistry

    data["models"] = ModelRegistry(settings.models_dir).active()
    from node.outputs.common import installation_device_uid

    try:  # the Device Observer UID our SRs carry (issue 18.9), made at the node's first start
        data["device_uid"] = installation_device_uid(settings.data_dir, create=False)
    except ValueError as exc:
        data["device_uid"] = None
        data["device_uid_error"] = str(exc)
    if settings.data_dir.exists():
        usage = shutil.disk_usage(settings.data_dir)
        data["disk_free_mb"] = usage.free // (1024 * 1024)
        data["disk_low"] = usage.free < settings.node.min_free_mb * 1024 * 1024
    if as_json:
        _print_json(data)
        return
    if runtime:
        console.print(f"[green]running[/green] pid {runtime['pid']} as {runtime['ae_title']} on "
                      f"{runtime['bind']}:{runtime['port']}{' (TLS)' if runtime.get('tls') else ''} since "
                      f"{_when(runtime['started_at'])}")
    else:
        console.print("[yellow]not running[/yellow]")
    console.print(f"data {data['data_dir']}  free {data.get('disk_free_mb', '?')} MB"
                  + ("  [red]below node.min_free_mb: new instances are refused[/red]" if data.get("disk_low") else ""))
    models = ", ".join(f"{k} {v}" for k, v in sorted(data["models"].items())) or "none active"
    console.print(f"models: {models}")
    console.print(f"device UID (SR observer): {data['device_uid'] or 'not assigned yet (made at the first start)'}"
                  + (f"  [red]{data['device_uid_error']}[/red]" if data.get("device_uid_error") else ""),
                  highlight=False)
    states = ", ".join(f"{k} {v}" for k, v in sorted(data["studies"].items())) or "none"
    console.print(f"studies: {states}")
    console.print(f"instances {data.get('instances', 0)}, duplicates {data.get('duplicates', 0)}, "
                  f"quarantined {data.get('quarantined', 0)}")
    outbox = "; ".join(f"{dest}: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
                       for dest, states in sorted(data["outbox"].items())) or "empty"
    console.print(f"outbox: {outbox}")


@config_app.command("check")
def config_check(config: Optional[Path] = ConfigOption, as_json: bool = JsonOption) -> None:
    """Validate the configuration and print the effective values (file + environment + defaults)."""
    settings = _settings(config)
    effective = settings.effective()
    if as_json:
        _print_json({"valid": True, "config": effective})
        return
    console.print(f"[green]configuration valid[/green] ({config or 'defaults'} + environment)")
    def emit(prefix: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if scalars:
            console.print(f"[bold]\\[{prefix}][/bold]")
            for key, value in scalars.items():
                console.print(f"{key} = {json.dumps(value)}", highlight=False)
        for key, value in values.items():
            if isinstance(value, dict):
                emit(f"{prefix}.{key}" if prefix else key, value)

    emit("", effective)


# ----- phantom -----------------------------------------------------------------------------------

@app.command()
def phantom(
    outdir: Path = typer.Argument(..., help="Folder to write the studies into."),
    studies: int = typer.Option(4, "--studies", "-n", min=1, help="How many studies."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same files)."),
    size: str = typer.Option("small", "--size", help="small (fast tests) or full (3328x2560, 14-bit)."),
    monochrome1: bool = typer.Option(False, "--monochrome1", help="Write MONOCHROME1 images."),
    series_laterality: bool = typer.Option(False, "--series-laterality",
                                           help="Laterality (0020,0060) instead of ImageLaterality."),
    view_position_only: bool = typer.Option(False, "--view-position-only",
                                            help="ViewPosition only, no ViewCodeSequence."),
    transfer_syntax: str = typer.Option("explicit", "--transfer-syntax",
                                        help="explicit, implicit, deflated, jpeg-ls, jpeg2000 or rle."),
    for_processing: bool = typer.Option(False, "--for-processing", help="For Processing images."),
    extra_views: bool = typer.Option(False, "--extra-views", help="Also write extra views (spot, XCCL)."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """Write synthetic four-view screening studies (MG DICOM, labels, reference report)."""
    from rich.progress import Progress

    from training.data.phantom import PhantomOptions, write_phantom_studies

    if size not in ("small", "full"):
        err_console.print("[red]--size must be small or full[/red]")
        raise typer.Exit(2)
    options = PhantomOptions(size=size, monochrome1=monochrome1,
                             laterality_attr="series" if series_laterality else "image",
                             view_codes=not view_position_only, transfer_syntax=transfer_syntax,
                             for_processing=for_processing, extra_views=extra_views)
    with Progress(console=err_console, disable=as_json or not err_console.is_terminal) as bar:
        task = bar.add_task("phantom studies", total=studies)
        dirs = write_phantom_studies(outdir, studies, seed, options, progress=lambda n: bar.advance(task, n))
    if as_json:
        _print_json({"studies": [str(d) for d in dirs]})
    else:
        console.print(f"wrote {len(dirs)} stud{'y' if len(dirs) == 1 else 'ies'} to {outdir}")


_add_models_app()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
