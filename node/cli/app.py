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
import time
from pathlib import Path
from typing import Any, Optional

import typer

from node.cli.common import (CalledAetOption, CallingAetOption, ConfigOption, JsonOption, TlsCaOption, TlsCertOption,
                             TlsKeyOption, TlsOption, console, err_console, local_time, markup, print_json,
                             settings_from, setup_logging, tls_client_options)
from node.cli.models import models_app
from node.cli.outbox import outbox_app
from node.cli.studies import studies_app
from node.config import Settings

app = typer.Typer(help="mammo-node: DICOM node for four-view screening mammography AI.",
                  no_args_is_help=True, add_completion=False)
config_app = typer.Typer(help="Check the configuration.", no_args_is_help=True)
app.add_typer(studies_app, name="studies")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
app.add_typer(outbox_app, name="outbox")


# ----- serve -------------------------------------------------------------------------------------

@app.command()
def serve(config: Optional[Path] = ConfigOption) -> None:
    """Run the node: receive, journal and assemble studies until stopped (Ctrl-C / SIGTERM)."""
    settings = settings_from(config)
    setup_logging(settings.node.log_level)
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

@app.command()
def echo(
    host: str = typer.Argument(..., help="Peer host."),
    port: int = typer.Argument(..., help="Peer port."),
    aet: str = CallingAetOption,
    aec: str = CalledAetOption,
    tls: bool = TlsOption,
    tls_ca: Optional[Path] = TlsCaOption,
    tls_cert: Optional[Path] = TlsCertOption,
    tls_key: Optional[Path] = TlsKeyOption,
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the peer."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """Check that a DICOM peer answers (C-ECHO)."""
    from node.dicom.scu import echo as do_echo

    ok, message = do_echo(host, port, aet, aec, timeout, tls_client_options(tls_ca, tls_cert, tls_key, tls))
    if as_json:
        print_json({"ok": ok, "message": message, "host": host, "port": port})
    else:
        console.print(("[green]" if ok else "[red]") + f"{host}:{port} {message}")
    raise typer.Exit(0 if ok else 1)


@app.command()
def send(
    host: str = typer.Argument(..., help="Peer host."),
    port: int = typer.Argument(..., help="Peer port."),
    paths: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
    aet: str = CallingAetOption,
    aec: str = CalledAetOption,
    tls: bool = TlsOption,
    tls_ca: Optional[Path] = TlsCaOption,
    tls_cert: Optional[Path] = TlsCertOption,
    tls_key: Optional[Path] = TlsKeyOption,
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
        results = do_send(host, port, files, aet, aec, timeout, tls_client_options(tls_ca, tls_cert, tls_key, tls),
                          progress=lambda _r: bar.advance(task))
    failed = [r for r in results if not r.ok]
    if as_json:
        print_json({"sent": len(results) - len(failed), "failed": len(failed),
                     "results": [{"path": r.path, "status": r.status, "comment": r.comment} for r in results]})
    else:
        for r in failed:
            status = "not sent" if r.status is None else f"0x{r.status:04X}"
            console.print(f"[red]{markup(r.path)}: {status} {markup(r.comment)}[/red]", highlight=False)
        console.print(f"{len(results) - len(failed)} of {len(results)} file(s) stored at {host}:{port}")
    raise typer.Exit(1 if failed else 0)


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

    settings = settings_from(config)
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
        print_json(data)
        return
    if runtime:
        console.print(f"[green]running[/green] pid {runtime['pid']} as {runtime['ae_title']} on "
                      f"{runtime['bind']}:{runtime['port']}{' (TLS)' if runtime.get('tls') else ''} since "
                      f"{local_time(runtime['started_at'])}")
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
    settings = settings_from(config)
    effective = settings.effective()
    if as_json:
        print_json({"valid": True, "config": effective})
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

    from phantoms.study import PhantomOptions, write_phantom_studies

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
        print_json({"studies": [str(d) for d in dirs]})
    else:
        console.print(f"wrote {len(dirs)} stud{'y' if len(dirs) == 1 else 'ies'} to {outdir}")




def main() -> None:
    app()


if __name__ == "__main__":
    main()
