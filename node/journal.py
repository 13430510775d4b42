"""The node's durable memory: one SQLite database in WAL mode.

Every accepted instance is recorded here *before* the C-STORE success status goes back, and
every study state change is recorded with its reason. At start the node rebuilds its timers
from this journal, so a crash or restart loses nothing and repeats nothing.

One connection guarded by a lock serves all threads (association handlers, timers, CLI):
SQLite serialises writers anyway, and a single connection keeps transactions simple.
``synchronous=FULL`` makes each commit durable against power loss, not only process crashes.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 2

# Columns added after version 1, added in place to an older journal at start (ALTER TABLE ... ADD
# COLUMN: the old rows read NULL, which means "not known", the safe value for each).
_ADDED_COLUMNS = {
    "studies": (
        # Which association delivered the study's images while it was receiving: an id unique
        # across restarts, or "*" once a second association delivered some (node.assembly).
        ("sender_association", "TEXT"),
        # When that single association was released (A-RELEASE, not an abort) with the study
        # receiving: the study may close release_grace_seconds later instead of settling.
        ("released_at", "REAL"),
    ),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    patient_id TEXT,
    patient_name TEXT,
    accession_number TEXT,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    four_views_at REAL,
    closed_at REAL,
    close_reason TEXT,
    incomplete_policy TEXT,
    selection TEXT,
    updated_at REAL NOT NULL,
    sender_association TEXT,
    released_at REAL
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state);

CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    series_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT,
    size INTEGER NOT NULL,
    calling_aet TEXT,
    peer_host TEXT,
    received_at REAL NOT NULL,
    position TEXT,
    view TEXT NOT NULL,
    duplicate_of INTEGER REFERENCES instances(id),
    after_close INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_sop ON instances(sop_instance_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);

CREATE TABLE IF NOT EXISTS study_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS study_events_study ON study_events(study_uid);

CREATE TABLE IF NOT EXISTS results (
    study_uid TEXT PRIMARY KEY REFERENCES studies(study_uid),
    created_at REAL NOT NULL,
    models TEXT NOT NULL,
    result TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    identity TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    delivered_at REAL,
    last_error TEXT,
    UNIQUE(destination, identity)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, destination, next_attempt_at);

CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER NOT NULL,
    path TEXT,
    calling_aet TEXT,
    peer_host TEXT,
    sop_class_uid TEXT,
    sop_instance_uid TEXT,
    study_uid TEXT
);
"""


@dataclass
class InstanceRecord:
    """One stored instance as the journal knows it."""

    id: int
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    path: str
    sha256: str | None  # computed only when a duplicate needs comparing
    size: int
    calling_aet: str | None
    peer_host: str | None
    received_at: float
    position: str | None
    view: dict[str, Any]
    duplicate_of: int | None
    after_close: bool


@dataclass
class StudyRecord:
    """One study's persisted assembly state."""

    study_uid: str
    state: str
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    first_received_at: float
    last_received_at: float
    four_views_at: float | None
    closed_at: float | None
    close_reason: str | None
    incomplete_policy: str | None
    selection: dict[str, Any] | None
    updated_at: float
    sender_association: str | None = None
    released_at: float | None = None
    instance_count: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)


def _instance(row: sqlite3.Row) -> InstanceRecord:
    values = dict(row)
    values["view"] = json.loads(values["view"])
    values["after_close"] = bool(values["after_close"])
    return InstanceRecord(**values)


def _study(row: sqlite3.Row) -> StudyRecord:
    values = dict(row)
    values["selection"] = json.loads(values["selection"]) if values["selection"] else None
    return StudyRecord(**values)


class Journal:
    """Thread-safe access to the node's SQLite journal."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._db.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )

    def _migrate(self) -> None:
        """Bring a journal written by an older version up to this schema (columns only)."""
        for table, columns in _ADDED_COLUMNS.items():
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version' AND CAST(value AS INTEGER) < ?",
                         (str(SCHEMA_VERSION), SCHEMA_VERSION))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block in one IMMEDIATE transaction (committed on success, rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # ----- instances -------------------------------------------------------------------------

    def find_instances_by_sop(self, sop_instance_uid: str) -> list[InstanceRecord]:
        rows = self.query("SELECT * FROM instances WHERE sop_instance_uid = ? ORDER BY id", (sop_instance_uid,))
        return [_instance(r) for r in rows]

    def study_instances(self, study_uid: str) -> list[InstanceRecord]:
        rows = self.query("SELECT * FROM instances WHERE study_uid = ? ORDER BY id", (study_uid,))
        return [_instance(r) for r in rows]

    @staticmethod
    def insert_instance(db: sqlite3.Connection, **values: Any) -> int:
        values = dict(values)
        values["view"] = json.dumps(values["view"], sort_keys=True)
        values["after_close"] = int(values.get("after_close", False))
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cursor = db.execute(f"INSERT INTO instances ({columns}) VALUES ({marks})", tuple(values.values()))
        return int(cursor.lastrowid)

    # ----- studies ---------------------------------------------------------------------------

    def get_study(self, study_uid: str, with_events: bool = False) -> StudyRecord | None:
        rows = self.query("SELECT * FROM studies WHERE study_uid = ?", (study_uid,))
        if not rows:
            return None
        study = _study(rows[0])
        study.instance_count = self.query(
            "SELECT COUNT(*) FROM instances WHERE study_uid = ?", (study_uid,)
        )[0][0]
        if with_events:
            study.events = [
                dict(r)
                for r in self.query(
                    "SELECT at, from_state, to_state, reason FROM study_events WHERE study_uid = ? ORDER BY id",
                    (study_uid,),
                )
            ]
        return study

    def find_studies(self, prefix: str) -> list[str]:
        """Study UIDs equal to ``prefix`` or starting with it (for CLI convenience)."""
        rows = self.query(
            "SELECT study_uid FROM studies WHERE study_uid = ? OR study_uid LIKE ? ESCAPE '\\' ORDER BY study_uid",
            (prefix, prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"),
        )
        return [r[0] for r in rows]

    def list_studies(self, state: str | None = None, limit: int | None = None) -> list[StudyRecord]:
        sql = (
            "SELECT s.*, (SELECT COUNT(*) FROM instances i WHERE i.study_uid = s.study_uid) AS n "
            "FROM studies s"
        )
        params: tuple[Any, ...] = ()
        if state:
            sql += " WHERE s.state = ?"
            params = (state,)
        sql += " ORDER BY s.first_received_at DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        out = []
        for row in self.query(sql, params):
            values = dict(row)
            count = values.pop("n")
            study = _study(values)  # type: ignore[arg-type]
            study.instance_count = count
            out.append(study)
        return out

    @staticmethod
    def record_event(
        db: sqlite3.Connection, study_uid: str, from_state: str | None, to_state: str, reason: str, at: float
    ) -> None:
        db.execute(
            "INSERT INTO study_events(study_uid, at, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
            (study_uid, at, from_state, to_state, reason),
        )

    def transition(
        self,
        study_uid: str,
        from_state: str,
        to_state: str,
        reason: str,
        **columns: Any,
    ) -> bool:
        """Move a study from ``from_state`` to ``to_state`` exactly once.

        Returns False (and changes nothing) when the study is no longer in ``from_state``: that
        is how a timer racing a restart, or two timers, can never close a study twice.
        """
        now = time.time()
        if "selection" in columns and columns["selection"] is not None:
            columns["selection"] = json.dumps(columns["selection"], sort_keys=True)
        sets = ", ".join(f"{name} = ?" for name in columns)
        sets = ("state = ?, updated_at = ?" + (", " + sets if sets else ""))
        with self.transaction() as db:
            cursor = db.execute(
                f"UPDATE studies SET {sets} WHERE study_uid = ? AND state = ?",
                (to_state, now, *columns.values(), study_uid, from_state),
            )
            if cursor.rowcount != 1:
                return False
            self.record_event(db, study_uid, from_state, to_state, reason, now)
        return True

    def finish_study(self, study_uid: str, result: dict[str, Any], reason: str,
                     outputs: list[dict[str, Any]] = (), now: float | None = None) -> bool:
        """PROCESSING -> DONE, the study's result and its queued outputs (``outbox`` rows: destination,
        kind, identity, payload), in one transaction: all or nothing survives a crash.

        A study processed again (after a crash mid-way, or on request) replaces its earlier result; an
        output already queued with the same identity (an identical result) is not queued twice, and
        an earlier result's output still PENDING for the same destination and kind is dead-lettered
        as superseded (one being sent at that moment finishes, and the new output replaces it).
        """
        now = time.time() if now is None else now
        with self.transaction() as db:
            cursor = db.execute("UPDATE studies SET state = 'DONE', updated_at = ? WHERE study_uid = ? AND "
                                "state = 'PROCESSING'", (now, study_uid))
            if cursor.rowcount != 1:
                return False
            db.execute("INSERT OR REPLACE INTO results(study_uid, created_at, models, result) VALUES (?, ?, ?, ?)",
                       (study_uid, now, json.dumps(result.get("models", {}), sort_keys=True),
                        json.dumps(result, sort_keys=True)))
            # An older result's output still waiting for a destination would reach it after the new
            # one: it is dead-lettered instead (the new output names what it replaces).
            # Kinds of one report family ("tid1500", "tid1500-enhanced": the same SR in another SOP
            # class, after a destination's tid1500_sop_class changed) supersede each other.
            current: dict[tuple[str, str], list[str]] = {}
            for out in outputs:
                current.setdefault((out["destination"], _family(out["kind"])), []).append(out["identity"])
            for (destination, family), identities in current.items():
                marks = ", ".join("?" * len(identities))
                db.execute(f"UPDATE outbox SET state = 'DEAD', updated_at = ?, last_error = ? WHERE study_uid = ? "
                           f"AND destination = ? AND (kind = ? OR kind LIKE ?) AND state = 'PENDING' "
                           f"AND identity NOT IN ({marks})",
                           (now, "superseded: the study was processed again with a different result", study_uid,
                            destination, family, family + "-%", *identities))
            for out in outputs:
                db.execute("INSERT OR IGNORE INTO outbox(study_uid, destination, kind, identity, payload, state, "
                           "created_at, next_attempt_at, updated_at) VALUES (?, ?, ?, ?, ?, 'PENDING', ?, ?, ?)",
                           (study_uid, out["destination"], out["kind"], out["identity"], out["payload"], now, now, now))
            self.record_event(db, study_uid, "PROCESSING", "DONE", reason, now)
        return True

    def get_result(self, study_uid: str) -> dict[str, Any] | None:
        rows = self.query("SELECT result FROM results WHERE study_uid = ?", (study_uid,))
        return json.loads(rows[0][0]) if rows else None

    def result_created_at(self, study_uid: str) -> float | None:
        rows = self.query("SELECT created_at FROM results WHERE study_uid = ?", (study_uid,))
        return float(rows[0][0]) if rows else None

    def state_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.query("SELECT state, COUNT(*) FROM studies GROUP BY state")}

    # ----- quarantine ------------------------------------------------------------------------

    def record_quarantine(self, **values: Any) -> int:
        values.setdefault("at", time.time())
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self.transaction() as db:
            cursor = db.execute(f"INSERT INTO quarantine ({columns}) VALUES ({marks})", tuple(values.values()))
            return int(cursor.lastrowid)

    def list_quarantine(self, limit: int = 100) -> list[dict[str, Any]]:
        return [dict(r) for r in self.query("SELECT * FROM quarantine ORDER BY id DESC LIMIT ?", (limit,))]

    def counts(self) -> dict[str, int]:
        return {
            "instances": self.query("SELECT COUNT(*) FROM instances")[0][0],
            "duplicates": self.query("SELECT COUNT(*) FROM instances WHERE duplicate_of IS NOT NULL")[0][0],
            "quarantined": self.query("SELECT COUNT(*) FROM quarantine")[0][0],
        }


def _family(kind: str) -> str:
    """The report an outbox kind renders ("tid1500-enhanced" -> "tid1500"; node.outputs.common)."""
    return kind.split("-", 1)[0]
