"""``mammo-node studies ...``: list the received studies, show one (positions, why each image was
chosen, state history, result), and process one again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from node.cli.common import (ConfigOption, JsonOption, console, err_console, local_time, markup, open_journal,
                             print_json, settings_from)
from node.study_result import StudyResult

studies_app = typer.Typer(help="Inspect received studies.", no_args_is_help=True)


@studies_app.command("list")
def studies_list(
    state: Optional[str] = typer.Option(None, "--state", help="Only studies in this state (e.g. COMPLETE)."),
    limit: int = typer.Option(200, "--limit", help="At most this many, newest first."),
    as_json: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
) -> None:
    """List studies with their state, newest first."""
    from node.logref import study_key

    journal = open_journal(settings_from(config))
    studies = journal.list_studies(state=state.upper() if state else None, limit=limit)
    if as_json:
        print_json([{
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
        table.add_row(study_key(s.study_uid), s.state, markup(s.accession_number or "-"), str(s.instance_count),
                      local_time(s.first_received_at), local_time(s.closed_at), markup(s.study_uid))
    console.print(table)


def _resolve_study(journal, ident: str) -> str:
    from node.logref import study_key

    matches = journal.find_studies(ident)
    if not matches and ident.startswith("s-"):
        matches = [s.study_uid for s in journal.list_studies() if study_key(s.study_uid) == ident]
    if len(matches) != 1:
        err_console.print(f"[red]{'no' if not matches else 'more than one'} study matches {markup(repr(ident))}[/red]")
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

    settings = settings_from(config)
    journal = open_journal(settings)
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
        print_json(data)
        return
    console.print(f"[bold]Study[/bold] {markup(study.study_uid)} ({data['key']})  state [bold]{study.state}[/bold]")
    console.print(f"accession {markup(study.accession_number or '-')}  patient {markup(study.patient_id or '-')}  "
                  f"{len(instances)} instance(s)")
    if study.close_reason:
        console.print(f"closed {local_time(study.closed_at)}: {markup(study.close_reason)}")
    views = Table(title="Four-view positions")
    for column in ("position", "SOP Instance UID", "why"):
        views.add_column(column)
    for position in ("R-CC", "R-MLO", "L-CC", "L-MLO"):
        chosen = selection["positions"].get(position)
        views.add_row(position, markup(chosen["sop_instance_uid"]) if chosen else "[red]missing[/red]",
                      markup(chosen["why"]) if chosen else "")
    console.print(views)
    if selection["extras"]:
        extras = Table(title="Other images (kept, not used)")
        for column in ("view", "SOP Instance UID", "why"):
            extras.add_column(column)
        for extra in selection["extras"]:
            extras.add_row(markup(extra["label"]), markup(extra["sop_instance_uid"]), markup(extra["why"]))
        console.print(extras)
    history = Table(title="State history")
    for column in ("at", "from", "to", "reason"):
        history.add_column(column)
    for event in study.events:
        history.add_row(local_time(event["at"]), event["from_state"] or "-", event["to_state"], markup(event["reason"]))
    console.print(history)
    if data["result"]:
        _print_result(StudyResult.from_json(data["result"]))


def _print_result(result: StudyResult) -> None:
    if result.status == "incomplete":
        console.print(f"result: incomplete study, missing {', '.join(result.missing_views)}; no models run")
        return
    table = Table(title="Result (preliminary AI output, not verified)")
    for column in ("breast", "BI-RADS", "density", "findings", "classifier BI-RADS / density"):
        table.add_column(column)
    for side, b in result.breasts.items():
        c = b.classifier
        findings = ", ".join(f"{f.kind} ({f.status})" for f in b.findings) or "-"
        table.add_row(side, str(b.birads), str(b.density), findings,
                      f"{c.birads} / {c.density}" if c is not None else "- / -")
    console.print(table)
    for d in result.disagreements:
        console.print(f"[yellow]{d.breast} {d.field}: report {d.report}, classifier {d.classifier}[/yellow]")
    console.print(f"models: {', '.join(f'{k} {v}' for k, v in sorted(result.models.items()))}")
    if result.report is not None:
        console.print(result.report.text, highlight=False, markup=False)


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
    settings = settings_from(config)
    journal = open_journal(settings)
    study_uid = _resolve_study(journal, uid)
    study = journal.get_study(study_uid)
    if study.state not in ("FAILED", "DONE"):
        message = f"study is {study.state}; only FAILED or DONE studies can be retried"
        print_json({"ok": False, "error": message}) if as_json else err_console.print(f"[red]{message}[/red]")
        raise typer.Exit(1)
    back = "COMPLETE" if study.four_views_at is not None else "INCOMPLETE"
    journal.transition(study_uid, study.state, back, "retry requested by an administrator")
    if as_json:
        print_json({"ok": True, "study_uid": study_uid, "from": study.state, "to": back})
    else:
        console.print(f"{study_uid}: {study.state} -> {back}; a running node processes it again shortly")
