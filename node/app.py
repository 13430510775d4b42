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
from node.logref import set_log_phi
from node.packages.registry import ModelRegistry
from node.outbox import Outbox
from node.outputs.prepare import OutputPreparer
from node.pipeline import Pipeline
from node.store import InstanceStore

log = logging.getLogger("mammo_node")

RUNTIME_FILE = "node.json"


class NodeApp:
    """One node process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        set_log_phi(settings.node.log_phi)
        self.journal = Journal(settings.journal_path)
        self.assembler = Assembler(self.journal, settings.assembly)
        self.store = InstanceStore(settings, self.journal, self.assembler)
        self.listener = DicomListener(settings.dicom, self.store)
        self.engine = InferenceEngine(ModelRegistry(settings.models_dir, settings.session_settings()),
                                      settings.session_settings(), settings.inference.precision,
                                      {"num_beams": settings.inference.num_beams,
                                       "max_new_tokens": settings.inference.max_new_tokens})
        self.models: dict[str, str] = {}
        self.outbox = Outbox(self.journal, settings)
        self.pipeline = Pipeline(self.journal, self.engine, settings.data_dir, outputs=OutputPreparer(settings),
                                 on_done=lambda _uid: self.outbox.wake())
        self.assembler.add_listener(self.pipeline.submit)
        self._stopped = threading.Event()
        self.started_at: float | None = None

    def start(self) -> None:
        self.store.clear_incoming()
        self._load_models()
        self.outbox.start()
        self.pipeline.start()
        self.assembler.start()
        self.listener.start()
        self.started_at = time.time()
        self._write_runtime_file()

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
        (self.settings.data_dir / RUNTIME_FILE).unlink(missing_ok=True)
        self.journal.close()
        log.info("node stopped")

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from a signal handler)."""
        while not self._stopped.wait(0.5):
            pass
