"""Study assembly: one persisted state machine per StudyInstanceUID.

DICOM has no "study complete" signal, and quiet-period timers alone either split slow
studies or delay every fast one. We close a study on *content* first: as soon as the four
screening positions (R-CC, R-MLO, L-CC, L-MLO) are filled, and no new image has arrived for
``settle_seconds`` (stragglers such as a retake), it is COMPLETE. Otherwise the study closes
INCOMPLETE when no image arrived for ``quiet_seconds`` or ``deadline_seconds`` have passed
since the first one, and ``incomplete_policy`` (report | partial | skip) is recorded with it
for the processing stage.

The association is a stronger hint than silence: modalities and PACS send a study over one
association and release it. When the one association that delivered every image of a study
(the four views among them) is released (A-RELEASE; an abort says nothing), the study closes
``release_grace_seconds`` after the release instead of ``settle_seconds`` after its last image.
A study that received images over a second association (a PACS forwarding in chunks, a
straggler, a resend after a restart) falls back to the settle rule. What this needs survives a
restart: the study row records the association id (unique across restarts, "*" once a second
one delivered) and the release time, so a study whose association was open when the node
stopped settles, and one released just before closes at once.

States: RECEIVING -> COMPLETE | INCOMPLETE (-> PROCESSING -> DONE | FAILED, later stages).
Every transition is a conditional UPDATE in the journal, so it happens exactly once even if
timers race a restart. Timers live on an apscheduler BackgroundScheduler and are rebuilt
from the journal at start: a study that fell due while the node was down closes at once.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

from apscheduler.schedulers.background import BackgroundScheduler

from node.config import AssemblySection
from node.journal import Journal, StudyRecord
from node.logref import study_ref
from node.selection import candidate_from_view, select_views, serves_a_position
from node.views import POSITIONS

log = logging.getLogger("mammo_node.assembly")

RECEIVING = "RECEIVING"
COMPLETE = "COMPLETE"
INCOMPLETE = "INCOMPLETE"

StudyListener = Callable[[str, str], None]
ProgressListener = Callable[[str], None]
SEVERAL = "*"  # studies.sender_association once a second association (or an unknown one) delivered

# A timer may fire a hair early relative to time.time(); treat that as due.
_TOLERANCE = 0.002


class Assembler:
    """Tracks studies as instances arrive and closes them on content or on time."""

    def __init__(self, journal: Journal, config: AssemblySection, clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.config = config
        self.clock = clock
        self._listeners: list[StudyListener] = []
        self._progress: list[ProgressListener] = []
        self._scheduler = BackgroundScheduler(timezone=timezone.utc, job_defaults={
            "misfire_grace_time": None, "coalesce": True, "max_instances": 1,
        })
        self._close_lock = threading.Lock()

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> int:
        """Start the timers and re-arm one for every study still RECEIVING; returns how many."""
        self._scheduler.start()
        receiving = self.journal.list_studies(state=RECEIVING)
        for study in receiving:
            self._schedule(study)
        if receiving:
            log.info("re-armed timers for %d study(ies) still receiving", len(receiving))
        return len(receiving)

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)

    def add_listener(self, listener: StudyListener) -> None:
        """Call ``listener(study_uid, new_state)`` after each study closes."""
        self._listeners.append(listener)

    def add_progress_listener(self, listener: ProgressListener) -> None:
        """Call ``listener(study_uid)`` after an arrival leaves a still-receiving study with its four
        views present (the pipeline's speculative runs)."""
        self._progress.append(listener)

    # ----- arrivals (called inside the store's journal transaction) ---------------------------

    def admit(self, db: sqlite3.Connection, instance: dict[str, Any], study_attrs: dict[str, Any],
              association: str | None = None) -> int:
        """Record one accepted instance and update its study; returns the instance's row id.

        Runs inside the caller's transaction so the instance row and the study row commit
        together: the journal never holds an instance without its study. ``association`` names
        the association that delivered it (None: unknown, which rules out closing on release).
        """
        now = instance["received_at"]
        study_uid = instance["study_uid"]
        sender = association or SEVERAL
        row = db.execute("SELECT state, four_views_at, sender_association FROM studies WHERE study_uid = ?",
                         (study_uid,)).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO studies(study_uid, state, patient_id, patient_name, accession_number, "
                "first_received_at, last_received_at, updated_at, sender_association) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (study_uid, RECEIVING, study_attrs.get("patient_id"), study_attrs.get("patient_name"),
                 study_attrs.get("accession_number"), now, now, now, sender),
            )
            Journal.record_event(db, study_uid, None, RECEIVING, "first instance received", now)
            state = RECEIVING
        else:
            state = row["state"]
        instance_id = Journal.insert_instance(db, **instance, after_close=state != RECEIVING)
        if state != RECEIVING:
            Journal.record_event(
                db, study_uid, state, state,
                f"instance received after the study closed; kept, not used ({instance['view'].get('label')})", now,
            )
            return instance_id
        if row is not None and row["sender_association"] != sender:
            sender = SEVERAL  # a second association (or the first one's id was never known)
        db.execute("UPDATE studies SET last_received_at = ?, updated_at = ?, sender_association = ? "
                   "WHERE study_uid = ?", (now, now, sender, study_uid))
        if row is None or row["four_views_at"] is None:
            accept = self.config.accept_for_processing
            filled = {
                r[0] for r in db.execute(
                    "SELECT position, view FROM instances WHERE study_uid = ? AND duplicate_of IS NULL "
                    "AND position IS NOT NULL", (study_uid,),
                )
                if serves_a_position(bool(json.loads(r[1]).get("for_presentation", True)), accept)
            }
            if filled >= set(POSITIONS):
                db.execute("UPDATE studies SET four_views_at = ? WHERE study_uid = ?", (now, study_uid))
        return instance_id

    def arrived(self, study_uid: str) -> None:
        """Re-arm the study's timer after an arrival has been committed."""
        study = self.journal.get_study(study_uid)
        if study is not None and study.state == RECEIVING:
            self._schedule(study)
            if study.four_views_at is not None:
                for listener in self._progress:
                    try:
                        listener(study_uid)
                    except Exception:
                        log.exception("progress listener failed for %s", study_ref(study_uid))

    def released(self, association: str, study_uids: set[str] | list[str], at: float | None = None) -> list[str]:
        """The association ``association`` was released (A-RELEASE) after delivering images of
        ``study_uids``. Records the release on each study it alone delivered, that is still
        receiving and has its four views, and re-arms its timer; returns those studies."""
        if not association or association == SEVERAL:
            return []
        at = self.clock() if at is None else at
        marked = []
        for study_uid in study_uids:
            with self.journal.transaction() as db:
                cursor = db.execute("UPDATE studies SET released_at = ?, updated_at = ? WHERE study_uid = ? "
                                    "AND state = ? AND sender_association = ? AND four_views_at IS NOT NULL",
                                    (at, at, study_uid, RECEIVING, association))
            if cursor.rowcount == 1:
                marked.append(study_uid)
                study = self.journal.get_study(study_uid)
                if study is not None and study.state == RECEIVING:
                    self._schedule(study)
        return marked

    def _release_due(self, study: StudyRecord) -> float | None:
        """When the release rule closes this study, or None where it does not apply."""
        if (not self.config.close_on_release or study.released_at is None or study.four_views_at is None
                or study.sender_association in (None, SEVERAL)):
            return None
        return max(study.released_at, study.last_received_at) + self.config.release_grace_seconds

    # ----- timers ----------------------------------------------------------------------------

    def due_time(self, study: StudyRecord) -> float:
        """When this study must next be looked at."""
        cfg = self.config
        deadline = study.first_received_at + cfg.deadline_seconds
        if study.four_views_at is not None:
            settle = max(study.four_views_at, study.last_received_at) + cfg.settle_seconds
            release = self._release_due(study)
            if release is not None:
                settle = min(settle, release)
            return min(settle, deadline)
        return min(study.last_received_at + cfg.quiet_seconds, deadline)

    def _schedule(self, study: StudyRecord) -> None:
        run_at = datetime.fromtimestamp(self.due_time(study), tz=timezone.utc)
        self._scheduler.add_job(
            self.evaluate, "date", run_date=run_at, args=[study.study_uid],
            id=study.study_uid, replace_existing=True,
        )

    def evaluate(self, study_uid: str) -> str | None:
        """Close the study if it is due; otherwise re-arm. Returns the new state, if any."""
        with self._close_lock:
            study = self.journal.get_study(study_uid)
            if study is None or study.state != RECEIVING:
                return None
            now = self.clock()
            due = self.due_time(study)
            if now + _TOLERANCE < due:
                self._schedule(study)
                return None
            state, reason = self._decide(study, now)
            selection = self.selection(study_uid)
            columns: dict[str, Any] = {"closed_at": now, "close_reason": reason, "selection": selection}
            if state == INCOMPLETE:
                columns["incomplete_policy"] = self.config.incomplete_policy
            if not self.journal.transition(study_uid, RECEIVING, state, reason, **columns):
                return None
        log.info("study %s %s: %s", study_ref(study_uid), state, reason)
        for listener in self._listeners:
            try:
                listener(study_uid, state)
            except Exception:  # a consumer's bug must not stop the timers
                log.exception("study listener failed for %s", study_ref(study_uid))
        return state

    def _decide(self, study: StudyRecord, now: float) -> tuple[str, str]:
        cfg = self.config
        deadline = study.first_received_at + cfg.deadline_seconds
        if study.four_views_at is not None:
            settle = max(study.four_views_at, study.last_received_at) + cfg.settle_seconds
            release = self._release_due(study)
            if release is not None and now + _TOLERANCE >= release and now < settle:
                return COMPLETE, (f"four views present; the association that sent the study was released "
                                  f"{cfg.release_grace_seconds:g} s ago")
            if now + _TOLERANCE >= deadline and now < settle:
                return COMPLETE, f"four views present; deadline of {cfg.deadline_seconds:g} s reached"
            return COMPLETE, f"four views present and no new image for {cfg.settle_seconds:g} s"
        missing = ", ".join(self.selection(study.study_uid)["missing"])
        if now + _TOLERANCE >= deadline:
            why = f"deadline of {cfg.deadline_seconds:g} s after the first image reached"
        else:
            why = f"no new image for {cfg.quiet_seconds:g} s"
        return INCOMPLETE, f"{why}; missing {missing}; policy {cfg.incomplete_policy}"

    def selection(self, study_uid: str) -> dict[str, Any]:
        """Which instance serves each position right now (see node.selection)."""
        candidates = [
            candidate_from_view(i.id, i.sop_instance_uid, i.view, i.duplicate_of is not None)
            for i in self.journal.study_instances(study_uid)
            if not i.after_close
        ]
        return select_views(candidates, self.config.accept_for_processing)
