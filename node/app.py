"""The running node: wires journal, assembly, store and listener together.

``NodeApp.start()`` recovers first (interrupted transfers removed, study timers re-armed
from the journal) and only then opens the port, so nothing arrives before the node knows
its own state. A small ``node.json`` in the data directory says which process serves it
(``mammo-node status`` reads it).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from node.assembly import Assembler
from node.config import Settings
from node.dicom.scp import DicomListener
from node.inference.engine import InferenceEngine, ModelUnavailable
from node.journal import Journal
from node.logref import install_library_filter, set_log_phi
from node.packages.registry import ModelRegistry
from node.audit import AuditLog
from node.http_api import HttpApi
from node.metrics import NodeMetrics
from node.outbox import Attempt, Outbox, OutboxRow
from node.outputs.prepare import OutputPreparer
from node.pipeline import Pipeline
from node.store import InstanceStore, StoreResult
from node.study_result import StudyResult

log = logging.getLogger("mammo_node")

RUNTIME_FILE = "node.json"


class NodeApp:
    """One node process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        set_log_phi(settings.node.log_phi)
        install_library_filter()
        self.journal = Journal(settings.journal_path)
        self.assembler = Assembler(self.journal, settings.assembly)
        self.store = InstanceStore(settings, self.journal, self.assembler)
        self.metrics = NodeMetrics(self.journal)
        self.audit = AuditLog(settings.audit_path)
        self.listener = DicomListener(settings.dicom, self.store, observer=self)
        self.engine = InferenceEngine(ModelRegistry(settings.models_dir, settings.session_settings()),
                                      settings.session_settings(), settings.inference.precision,
                                      {"num_beams": settings.inference.num_beams,
                                       "max_new_tokens": settings.inference.max_new_tokens})
        self.models: dict[str, str] = {}
        preparer = OutputPreparer(settings)
        self.outbox = Outbox(self.journal, settings, preparer, on_attempt=self._delivery_attempted)
        self.pipeline = Pipeline(self.journal, self.engine, settings.data_dir, outputs=preparer,
                                 on_done=self._study_done,
                                 sources={"density": settings.results.density_source,
                                          "birads": settings.results.birads_source},
                                 speculative_runs=settings.inference.speculative_runs,
                                 mark_threshold=settings.results.mark_threshold,
                                 max_marks_per_image=settings.results.max_marks_per_image)
        self.http: HttpApi | None = None
        if settings.http.enabled:
            self.http = HttpApi(settings.http.bind, settings.http.port, self.metrics.render, self.health,
                                self.readiness)
        self.assembler.add_listener(self.pipeline.submit)
        if settings.inference.speculative_runs > 0:
            self.assembler.add_progress_listener(
                lambda uid: self.pipeline.speculate(uid, self.assembler.selection(uid)))
        self._stopped = threading.Event()
        self.started_at: float | None = None

    def start(self) -> None:
        self.store.clear_incoming()
        self._load_models()
        self.outbox.start()
        self.pipeline.start()
        self.assembler.start()
        self.listener.start()
        if self.http is not None:
            self.http.start()
        self.started_at = time.time()
        self._write_runtime_file()

    # ----- observers: metrics and audit (called from listener, pipeline and outbox threads) ---------

    def association(self, calling_ae: str, host: str) -> None:
        self.metrics.associations.labels(calling_ae).inc()
        self.audit.write("association", calling_ae=calling_ae, peer=host)

    def stored(self, calling_ae: str, host: str, size: int, result: StoreResult) -> None:
        if result.instance_id is None:
            return
        self.metrics.instances.labels(calling_ae).inc()
        self.metrics.bytes.labels(calling_ae).inc(size)
        self.audit.write("received", calling_ae=calling_ae, peer=host, study_uid=result.study_uid,
                         instance_id=result.instance_id, status=f"0x{result.status:04X}")

    def _study_done(self, study_uid: str, state: str, result: StudyResult | None) -> None:
        self.metrics.studies_processed.labels(state.lower()).inc()
        if result is not None:
            timings = result.timings or {}
            for model in ("versamammo", "mammorg"):
                if model in timings:
                    self.metrics.inference.labels(model).observe(timings[model])
            self.audit.write("result", study_uid=study_uid, models=dict(result.models), status=result.status)
            self.outbox.wake()

    def _delivery_attempted(self, row: OutboxRow, attempt: Attempt) -> None:
        self.metrics.deliveries.labels(row.destination, attempt.outcome).inc()
        if row.kind == "oru" and attempt.outcome != "delivered" and attempt.detail[:2] in ("AE", "AR", "CE", "CR"):
            self.metrics.hl7_naks.labels(attempt.detail[:2]).inc()
        state = self.outbox.queue.get(row.id)
        if state is not None and state.state in ("DELIVERED", "DEAD"):
            self.audit.write("delivered" if state.state == "DELIVERED" else "dead_letter", study_uid=row.study_uid,
                             destination=row.destination, kind=row.kind, identity=row.identity,
                             attempts=state.attempts, detail=attempt.detail)

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "uptime_seconds": round(time.time() - (self.started_at or time.time()), 1)}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        problems = []
        if not self.listener.running:
            problems.append("DICOM listener is not running")
        try:
            self.journal.query("SELECT 1")
        except Exception as exc:  # a journal that no longer answers
            problems.append(f"journal: {type(exc).__name__}")
        missing = [k for k in ("versamammo", "mammorg") if k not in self.engine.registry.active()]
        if missing:
            problems.append("no active " + " or ".join(missing) + " model package")
        return not problems, {"ready": not problems, "problems": problems}

    def _load_models(self) -> None:
        """Load and warm up the active packages now, so the first study does not wait for it.

        Missing or broken models never stop the node: it still receives and journals studies,
        and they are processed once models are installed (``mammo-node models ...``).
        """
        try:
            snapshot = self.engine.snapshot()
        except ModelUnavailable as exc:
            log.error("%s", exc)
            return
        self.models = dict(snapshot.versions)
        missing = [kind for kind in ("versamammo", "mammorg") if kind not in self.models]
        if self.models:
            log.info("models: %s", ", ".join(f"{k} {v}" for k, v in sorted(self.models.items())))
        if missing:
            log.warning("no active %s package: install one (mammo-node models install PATH, or "
                        "mammo-node models bootstrap-demo)", " or ".join(missing))

    def _write_runtime_file(self) -> None:
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "ae_title": self.settings.dicom.ae_title,
            "bind": self.settings.dicom.bind,
            "port": self.listener.port,
            "tls": self.settings.dicom.tls.enabled,
            "models": self.models,
            "http_port": self.http.port if self.http is not None else None,
        }
        path = self.settings.data_dir / RUNTIME_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, path)

    def stop(self) -> None:
        """Stop accepting, let timers finish, close the journal. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.listener.stop()
        self.assembler.stop()
        self.pipeline.stop()
        self.outbox.stop()
        if self.http is not None:
            self.http.stop()
        (self.settings.data_dir / RUNTIME_FILE).unlink(missing_ok=True)
        self.journal.close()
        self.audit.close()
        log.info("node stopped")

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler)."""
        while not self._stopped.wait(0.5):
            pass
