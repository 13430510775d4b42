"""What every ``mammo-node`` command shares: consoles, the --config/--json options, the DICOM
peer options of ``echo`` and ``send``, loading settings and the journal, and output helpers.

Exit codes of the whole CLI: 0 success, 1 the operation failed, 2 bad usage or configuration.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console

from node.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from node.dicom.scu import TLSClientOptions
    from node.journal import Journal

console = Console()
err_console = Console(stderr=True)

ConfigOption = typer.Option(None, "--config", "-c", help="TOML configuration file.", exists=False)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")

# The peer options of the SCU commands (echo, send), defined once.
CallingAetOption = typer.Option("MAMMO_NODE_SCU", "--aet", help="Our (calling) AE title.")
CalledAetOption = typer.Option("ANY-SCP", "--aec", help="The peer's (called) AE title.")
TlsOption = typer.Option(False, "--tls", help="Use TLS.")
TlsCaOption = typer.Option(None, "--tls-ca", help="CA certificate to verify the peer.")
TlsCertOption = typer.Option(None, "--tls-cert", help="Our client certificate.")
TlsKeyOption = typer.Option(None, "--tls-key", help="Our client key.")


def settings_from(config: Optional[Path]) -> Settings:
    """The node's settings from ``config`` (+ environment); a configuration error exits with 2."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2)


def open_journal(settings: Settings) -> "Journal":
    """The node's journal; exits with 1 when there is none yet."""
    from node.journal import Journal

    if not settings.journal_path.exists():
        err_console.print(f"no journal at {settings.journal_path} (has the node received anything?)")
        raise typer.Exit(1)
    return Journal(settings.journal_path)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def markup(value: Any) -> str:
    """A value that came from a data set (or a peer), escaped for rich markup: an AccessionNumber
    of "[/bold]" must print as such, not break the table for every study."""
    from rich.markup import escape

    return escape("" if value is None else str(value))


def local_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def setup_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(name)s: %(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=True)])
    # Library chatter stays out of the node log (pynetdicom can log dataset contents).
    for name in ("pynetdicom", "apscheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)


def tls_client_options(ca: Optional[Path], cert: Optional[Path], key: Optional[Path],
                       tls: bool) -> "TLSClientOptions | None":
    from node.dicom.scu import TLSClientOptions

    if not (tls or ca or cert or key):
        return None
    return TLSClientOptions(ca=ca, cert=cert, key=key)
