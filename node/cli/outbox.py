"""``mammo-node outbox ...``: see, re-send and clean up result deliveries (node.outbox).

Works on the journal directly, beside a running node: ``retry`` re-queues rows and the node's
poll (every few seconds) sends them. Exit codes: 0 done (also when there was nothing to do: the
JSON says how many rows were affected), 1 no journal, 2 bad usage or configuration.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from node.cli.common import (ConfigOption, JsonOption, console, err_console, local_time, open_journal, print_json,
                             settings_from)
from node.outbox import DEAD, DELIVERED, STATES, OutboxQueue

outbox_app = typer.Typer(help="List, re-send and purge result deliveries (SRs to PACS, ORU to RIS).",
                         no_args_is_help=True)


def _queue(config: Optional[Path]) -> tuple[OutboxQueue, Any]:
    settings = settings_from(config)
    return OutboxQueue(open_journal(settings)), settings


@outbox_app.command("list")
def outbox_list(
    state: Optional[str] = typer.Option(None, "--state", help="Only PENDING, SENDING, DELIVERED or DEAD."),
    destination: Optional[str] = typer.Option(None, "--destination", "-d", help="Only this destination."),
    limit: int = typer.Option(500, "--limit", help="At most this many rows."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """Show queued, delivered and dead-lettered outputs, with the last error of each."""
    from node.logref import study_ref

    if state is not None and state.upper() not in STATES:
        err_console.print(f"[red]--state must be one of {', '.join(STATES)}[/red]")
        raise typer.Exit(2)
    queue, settings = _queue(config)
    rows = queue.list(state=state.upper() if state else None, destination=destination, limit=limit)
    configured = {d.name for d in settings.outputs.dicom} | ({"hl7"} if settings.outputs.hl7 else set())
    if as_json:
        print_json({"rows": [r.to_dict() for r in rows], "depth": queue.depth(), "configured": sorted(configured)})
        return
    table = Table(title=f"outbox ({len(rows)} rows)")
    for column in ("id", "study", "destination", "kind", "state", "attempts", "next / delivered", "last error"):
        table.add_column(column, overflow="fold")
    for r in rows:
        when = local_time(r.delivered_at) if r.state == DELIVERED else local_time(r.next_attempt_at) if r.state != DEAD else "-"
        dest = r.destination if r.destination in configured else f"{r.destination} (not configured)"
        table.add_row(str(r.id), study_ref(r.study_uid), dest, r.kind, r.state, str(r.attempts), when,
                      r.last_error or "")
    console.print(table)


@outbox_app.command("retry")
def outbox_retry(
    ids: Optional[list[int]] = typer.Argument(None, help="Row ids to send again (default: every DEAD row)."),
    destination: Optional[str] = typer.Option(None, "--destination", "-d", help="Only rows of this destination."),
    now: bool = typer.Option(False, "--now", help="Also send PENDING rows now instead of at their backoff time."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """Queue dead letters (or the given rows) again with a fresh attempt count.

    A row already DELIVERED is sent again only when named by id (e.g. the PACS lost it).
    """
    queue, _ = _queue(config)
    count = queue.requeue(ids=ids or None, destination=destination, dead_only=not now)
    if as_json:
        print_json({"ok": count > 0, "requeued": count})
    else:
        console.print(f"{count} rows queued again; a running node sends them within seconds" if count
                      else "nothing to retry")


@outbox_app.command("purge")
def outbox_purge(
    delivered: bool = typer.Option(False, "--delivered", help="Delete DELIVERED rows."),
    dead: bool = typer.Option(False, "--dead", help="Delete DEAD rows (their results stay in the journal)."),
    older_than_days: float = typer.Option(30.0, "--older-than-days", help="Only rows last changed before this."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """Delete old delivered and/or dead rows and the payload files no row needs any more."""
    states = tuple(s for s, on in ((DELIVERED, delivered), (DEAD, dead)) if on)
    if not states:
        err_console.print("[red]say what to purge: --delivered and/or --dead[/red]")
        raise typer.Exit(2)
    queue, settings = _queue(config)
    count = queue.purge(states, time.time() - older_than_days * 86400, settings.data_dir)
    if as_json:
        print_json({"ok": True, "purged": count, "states": list(states)})
    else:
        console.print(f"{count} rows purged")
