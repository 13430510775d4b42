"""The outbox: a persistent per-destination delivery queue in the journal.

Each queued output is one ``outbox`` row (destination, kind, identity = SOP Instance UID or HL7
control ID, payload file) created in the same transaction that marks its study DONE
(Journal.finish_study), so a result and its deliveries are never out of step.

States::

    PENDING --send--> SENDING --ack--> DELIVERED
       ^                 |  \\--refused for good (HL7 AR/CR, DICOM error status)--> DEAD
       |                 |
       +--retry later----+   (transport error, HL7 AE/CE, peer busy): after outbox.max_attempts -> DEAD

Delivery runs on an APScheduler background scheduler: one job per destination (so a PACS that is
down never delays the RIS), each draining its due rows in queue order; a failed transport ends
that round and the row's next attempt is scheduled ``backoff_seconds * 2**(attempts-1)`` later
(capped at ``max_backoff_seconds``, +-25 % jitter so a recovering peer is not hit by every node at
once). New work wakes the job at once; a poll every ``poll_seconds`` also picks up what an
administrator re-queued from the CLI.

Guarantees: a row reaches DELIVERED only after the receiver acknowledged it, and is never sent
again afterwards. A crash during a send leaves the row SENDING; at the next start it goes back to
PENDING and is sent again: at-least-once, made idempotent by the identities (the same SOP Instance
UID replaces itself in a PACS; the same MSH-10 control ID lets a RIS drop the duplicate).
"""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from node.config import OutboxSection, Settings
from node.journal import Journal
from node.logref import study_ref
from node.outputs.prepare import HL7_DESTINATION, OutputPreparer, OutputSuperseded

log = logging.getLogger("mammo_node.outbox")

PENDING, SENDING, DELIVERED, DEAD = "PENDING", "SENDING", "DELIVERED", "DEAD"
STATES = (PENDING, SENDING, DELIVERED, DEAD)
BATCH = 16  # rows per association / round


@dataclass(frozen=True)
class OutboxRow:
    id: int
    study_uid: str
    destination: str
    kind: str
    identity: str
    payload: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float
    updated_at: float
    delivered_at: float | None
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Attempt:
    """The outcome of sending one row: ``delivered``, ``retry`` or ``reject``."""

    outcome: str
    detail: str


def backoff_delay(attempts: int, first: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones (exponential, +-25 % jitter)."""
    base = min(cap, first * (2 ** max(0, attempts - 1)))
    return base * (rng or random).uniform(0.75, 1.25)


class OutboxQueue:
    """The outbox rows in the journal (used by the node and by the CLI)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def list(self, state: str | None = None, destination: str | None = None, study_uid: str | None = None,
             limit: int | None = None) -> list[OutboxRow]:
        sql, params = "SELECT * FROM outbox WHERE 1=1", []
        for column, value in (("state", state), ("destination", destination), ("study_uid", study_uid)):
            if value:
                sql += f" AND {column} = ?"
                params.append(value)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [OutboxRow(**dict(r)) for r in self.journal.query(sql, tuple(params))]

    def get(self, row_id: int) -> OutboxRow | None:
        rows = self.journal.query("SELECT * FROM outbox WHERE id = ?", (row_id,))
        return OutboxRow(**dict(rows[0])) if rows else None

    def depth(self) -> dict[str, dict[str, int]]:
        """``{destination: {state: count}}``."""
        out: dict[str, dict[str, int]] = {}
        for dest, state, n in self.journal.query("SELECT destination, state, COUNT(*) FROM outbox "
                                                 "GROUP BY destination, state"):
            out.setdefault(dest, {})[state] = n
        return out

    def due(self, destination: str, now: float, limit: int = BATCH) -> list[OutboxRow]:
        rows = self.journal.query("SELECT * FROM outbox WHERE destination = ? AND state = 'PENDING' AND "
                                  "next_attempt_at <= ? ORDER BY id LIMIT ?", (destination, now, limit))
        return [OutboxRow(**dict(r)) for r in rows]

    def claim(self, row: OutboxRow) -> bool:
        """PENDING -> SENDING, counting the attempt; False if someone else changed the row."""
        now = time.time()
        with self.journal.transaction() as db:
            cursor = db.execute("UPDATE outbox SET state = 'SENDING', attempts = attempts + 1, updated_at = ? "
                                "WHERE id = ? AND state = 'PENDING'", (now, row.id))
            return cursor.rowcount == 1

    def finish(self, row_id: int, state: str, error: str | None = None, next_attempt_at: float | None = None) -> None:
        now = time.time()
        with self.journal.transaction() as db:
            db.execute("UPDATE outbox SET state = ?, updated_at = ?, last_error = ?, "
                       "next_attempt_at = COALESCE(?, next_attempt_at), "
                       "delivered_at = CASE WHEN ? = 'DELIVERED' THEN ? ELSE delivered_at END "
                       "WHERE id = ? AND state = 'SENDING'",
                       (state, now, error, next_attempt_at, state, now, row_id))

    def recover(self) -> int:
        """Rows left SENDING by a crash go back to PENDING (sent again: at-least-once)."""
        with self.journal.transaction() as db:
            cursor = db.execute("UPDATE outbox SET state = 'PENDING', updated_at = ?, "
                                "last_error = 'interrupted by a restart' WHERE state = 'SENDING'", (time.time(),))
            return cursor.rowcount

    def requeue(self, ids: list[int] | None = None, destination: str | None = None, dead_only: bool = True) -> int:
        """Send rows again now with a fresh attempt count: the given ids (any state but SENDING), or
        all DEAD rows (of ``destination``). Returns how many rows were re-queued."""
        now = time.time()
        sql = "UPDATE outbox SET state = 'PENDING', attempts = 0, next_attempt_at = ?, updated_at = ? WHERE "
        params: list[Any] = [now, now]
        if ids:
            sql += f"id IN ({','.join('?' * len(ids))}) AND state != 'SENDING'"
            params.extend(ids)
        else:
            sql += "state = 'DEAD'" if dead_only else "state IN ('DEAD', 'PENDING')"
        if destination:
            sql += " AND destination = ?"
            params.append(destination)
        with self.journal.transaction() as db:
            return db.execute(sql, tuple(params)).rowcount

    def purge(self, states: tuple[str, ...], older_than: float, data_dir: Path) -> int:
        """Delete rows in ``states`` last updated before ``older_than`` and payloads no row needs any more."""
        marks = ",".join("?" * len(states))
        with self.journal.transaction() as db:
            victims = db.execute(f"SELECT id, payload FROM outbox WHERE state IN ({marks}) AND updated_at < ?",
                                 (*states, older_than)).fetchall()
            db.executemany("DELETE FROM outbox WHERE id = ?", [(r[0],) for r in victims])
            still = {r[0] for r in db.execute("SELECT DISTINCT payload FROM outbox").fetchall()}
        for _, payload in victims:
            if payload not in still:
                (data_dir / payload).unlink(missing_ok=True)
        return len(victims)


Sender = Callable[[list[tuple[OutboxRow, Path]]], list[Attempt]]


class Outbox:
    """Delivers queued outputs (see the module docstring)."""

    def __init__(self, journal: Journal, settings: Settings, preparer: OutputPreparer | None = None,
                 poll_seconds: float | None = None, on_attempt: Callable[[OutboxRow, Attempt], None] | None = None) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self.queue = OutboxQueue(journal)
        self.journal = journal
        self.preparer = preparer or OutputPreparer(settings)
        self.settings = settings
        self.poll_seconds = poll_seconds or settings.outbox.poll_seconds
        self.on_attempt = on_attempt
        self._closers: list[Callable[[], None]] = []
        self.dicom_senders: dict[str, Any] = {}  # name -> node.outputs.dicom_send.DicomSender
        self._senders: dict[str, Sender] = self._build_senders()
        # Our own scheduler logger, quiet below ERROR: "skipped: maximum number of running
        # instances" just means a drain is still busy, which is how it is meant to work.
        scheduler_log = logging.getLogger("mammo_node.outbox.scheduler")
        scheduler_log.setLevel(logging.ERROR)
        self._scheduler = BackgroundScheduler(
            logger=scheduler_log,
            executors={"default": ThreadPoolExecutor(max(1, len(self._senders)))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self._lock = threading.Lock()
        self.idle = threading.Event()

    # ------------------------------------------------------------------ senders
    def _build_senders(self) -> dict[str, Sender]:
        senders: dict[str, Sender] = {}
        for destination in self.settings.outputs.dicom:
            senders[destination.name] = self._dicom_sender(destination)
        if self.settings.outputs.hl7 is not None:
            senders[HL7_DESTINATION] = self._hl7_sender(self.settings.outputs.hl7)
        return senders

    def _dicom_sender(self, destination: Any) -> Sender:
        from node.outputs.dicom_send import DicomSender

        sender = DicomSender(destination, self.settings.dicom.ae_title)  # keeps the association open a while
        self._closers.append(sender.close)
        self.dicom_senders[destination.name] = sender

        def send(batch: list[tuple[OutboxRow, Path]]) -> list[Attempt]:
            results = sender.send([path for _, path in batch])
            return [Attempt(r.outcome, r.detail) for r in results]
        return send

    def _hl7_sender(self, config: Any) -> Sender:
        from node.outputs.mllp import MLLPClient, MLLPError

        def send(batch: list[tuple[OutboxRow, Path]]) -> list[Attempt]:
            client = MLLPClient(config.host, config.port, connect_timeout=config.connect_timeout,
                                read_timeout=config.read_timeout)
            out: list[Attempt] = []
            for index, (row, path) in enumerate(batch):
                try:
                    ack = client.send(path.read_bytes().decode("utf-8"))
                except MLLPError as exc:
                    # The peer is unreachable: the rest of the batch would fail the same way.
                    out.extend([Attempt("retry", str(exc))] * (len(batch) - index))
                    break
                outcome = ack.outcome(row.identity)
                if ack.control_id != row.identity:
                    detail = f"{ack.code or 'no code'}: the ACK is for another control ID"
                else:
                    # Never the RIS's text (MSA-3/ERR): an ACK may echo patient data into logs and journal.
                    detail = ack.describe()
                out.append(Attempt("delivered" if outcome == "accepted" else outcome, detail))
            return out
        return send

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        recovered = self.queue.recover()
        if recovered:
            log.warning("%d deliveries were interrupted by a restart; sending them again", recovered)
        for name in self._senders:
            self._scheduler.add_job(self._drain, "interval", seconds=self.poll_seconds, args=[name], id=name,
                                    next_run_time=datetime.now())
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        for close in self._closers:
            close()

    def wake(self, destination: str | None = None) -> None:
        """Run the drain of ``destination`` (or of all) now instead of at the next poll."""
        if not self._scheduler.running:
            return
        for name in [destination] if destination else list(self._senders):
            job = self._scheduler.get_job(name)
            if job is not None:
                job.modify(next_run_time=datetime.now())

    def destinations(self) -> list[str]:
        return list(self._senders)

    # ------------------------------------------------------------------ delivery
    def _drain(self, destination: str) -> None:
        """Send every due row of ``destination``; stop at the first transport failure."""
        sender = self._senders[destination]
        cfg = self.settings.outbox
        while True:
            rows = [r for r in self.queue.due(destination, time.time()) if self.queue.claim(r)]
            if not rows:
                return
            batch = []
            for row in rows:
                try:
                    batch.append((row, self.preparer.render(self.journal, row.study_uid, row.kind, row.identity)))
                except OutputSuperseded as exc:
                    self._record(row, Attempt("reject", f"superseded: {exc}"), cfg)
                except Exception as exc:  # an encoder bug: dead-letter it with the reason, keep going
                    log.exception("rendering %s of study %s failed", row.kind, study_ref(row.study_uid))
                    self._record(row, Attempt("reject", f"encoding failed: {type(exc).__name__}: {exc}"), cfg)
            try:
                attempts = sender(batch) if batch else []
            except Exception as exc:  # a bug in a sender must not lose rows: retry them later
                log.exception("sending to %s failed", destination)
                attempts = [Attempt("retry", f"{type(exc).__name__}: {exc}")] * len(batch)
            any_retry = False
            for (row, _), attempt in zip(batch, attempts):
                self._record(row, attempt, cfg)
                any_retry |= attempt.outcome == "retry"
            if any_retry:
                return

    def _record(self, row: OutboxRow, attempt: Attempt, cfg: OutboxSection) -> None:
        attempts = row.attempts + 1
        if attempt.outcome == "delivered":
            self.queue.finish(row.id, DELIVERED, None)
            log.info("delivered %s of study %s to %s (%s)", row.kind, study_ref(row.study_uid), row.destination,
                     attempt.detail)
        elif attempt.outcome == "reject" or attempts >= cfg.max_attempts:
            why = "refused" if attempt.outcome == "reject" else f"{attempts} attempts failed"
            self.queue.finish(row.id, DEAD, f"{why}: {attempt.detail}"[:500])
            log.error("dead letter: %s of study %s to %s, %s: %s", row.kind, study_ref(row.study_uid),
                      row.destination, why, attempt.detail)
        else:
            delay = backoff_delay(attempts, cfg.backoff_seconds, cfg.max_backoff_seconds)
            self.queue.finish(row.id, PENDING, attempt.detail[:500], time.time() + delay)
            log.warning("delivery of %s to %s failed (attempt %d/%d, next in %.0f s): %s", row.kind,
                        row.destination, attempts, cfg.max_attempts, delay, attempt.detail)
        if self.on_attempt is not None:
            self.on_attempt(row, attempt)
