"""From a closed study to its structured result: preprocessing, both models, the report parser.

Studies arrive from the assembler (COMPLETE, or INCOMPLETE under ``incomplete_policy``) and are
processed one at a time by a worker thread (ONNX Runtime already uses every core inside one
study). For each study:

1. COMPLETE/INCOMPLETE -> PROCESSING (a conditional update: a study is taken once);
2. one snapshot of the active model versions, used for the whole study (node.inference.engine);
3. the selected view of each position is preprocessed exactly as the package's manifest says
   (models.preprocess, the implementation training used);
4. VersaMammo per view, averaged per breast; MammoRG's report; ``models.reportparse`` reads it;
5. the outputs each configured destination gets are planned (node.outputs.prepare: kinds and
   identities; the bytes are rendered later on the delivery threads);
6. the result, its queued outputs (node.outbox) and PROCESSING -> DONE in one journal
   transaction; the outbox is woken to deliver them.

While a kind of model has no active package (a fresh node), closed studies wait in their state
and are picked up as soon as both are active (the journal is rescanned every ``rescan_seconds``
while the worker is idle, which also picks up ``mammo-node studies retry``): nothing fails
just because models were installed after the images arrived. Anything else that goes wrong
(an unreadable image, a package that fails to load, a model error) ends the study FAILED with the reason (``studies show`` prints it) and
the worker goes on. ``incomplete_policy``: ``skip`` leaves an INCOMPLETE study alone, ``report``
records a result that says which views are missing (no model runs), ``partial`` processes the
views present (MammoRG has a learned stand-in for a missing view). A study left PROCESSING by a
crash is processed again at the next start (the result is deterministic and replaces nothing
that was sent).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

import numpy as np
import pydicom

from models.preprocess import PreprocessConfig, preprocess
from models.reportparse import parse_report
from node.inference.engine import InferenceEngine
from node.journal import Journal
from node.logref import study_ref
from node.results import breast_probabilities, build_result, reporting_sources
from node.outputs.amend import delivered_identities, replaced_outputs
from node.outputs.prepare import OutputPreparer, selected_sources
from node.views import POSITIONS

log = logging.getLogger("mammo_node.pipeline")

PROCESSING, DONE, FAILED = "PROCESSING", "DONE", "FAILED"


class StudyFailed(Exception):
    """A study cannot be processed; the message is recorded as its reason."""


class Pipeline:
    """The processing stage of a node (see the module docstring)."""

    def __init__(self, journal: Journal, engine: InferenceEngine, data_dir: Any, rescan_seconds: float = 5.0,
                 outputs: OutputPreparer | None = None,
                 on_done: Callable[[str, str, dict[str, Any] | None], None] | None = None,
                 sources: dict[str, str] | None = None) -> None:
        self.journal = journal
        self.sources = dict(sources or {})
        self.outputs = outputs
        self.on_done = on_done
        self.rescan_seconds = rescan_seconds
        self._waiting: set[str] = set()
        self.engine = engine
        self.data_dir = data_dir
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()
        self.idle.set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> int:
        """Start the worker and queue what a previous run left: closed studies and interrupted ones."""
        pending = [(s.study_uid, s.state) for state in (PROCESSING, "COMPLETE", "INCOMPLETE")
                   for s in self.journal.list_studies(state=state)]
        self._thread = threading.Thread(target=self._work, name="pipeline", daemon=True)
        self._thread.start()
        for uid, state in sorted(pending, key=lambda item: item[1] != PROCESSING):
            self.submit(uid, state)
        return len(pending)

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, study_uid: str, state: str) -> None:
        """Assembler listener: a study closed in ``state``."""
        self.idle.clear()
        self._queue.put((study_uid, state))

    def _rescan(self) -> None:
        """Queue closed studies the worker has not taken: those that waited for models, and those an
        admin sent back with ``mammo-node studies retry`` from another process."""
        if not self.models_ready():
            return
        for state in ("COMPLETE", "INCOMPLETE"):
            for study in self.journal.list_studies(state=state):
                if state == "INCOMPLETE" and (study.incomplete_policy or "report") == "skip":
                    continue
                self.submit(study.study_uid, state)
        self._waiting.clear()

    def models_ready(self) -> bool:
        return all(kind in self.engine.registry.active() for kind in ("versamammo", "mammorg"))

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.rescan_seconds)
            except queue.Empty:
                self._rescan()
                continue
            if item is None:
                return
            try:
                self.process(*item)
            except Exception:  # never let one study stop the worker
                log.exception("unexpected error processing %s", study_ref(item[0]))
            if self._queue.empty():
                self.idle.set()

    # ------------------------------------------------------------------ one study
    def process(self, study_uid: str, state: str) -> str | None:
        """Process one study that is in ``state``; returns its final state (None when not taken)."""
        study = self.journal.get_study(study_uid)
        if study is None or study.state != state:
            return None
        policy = study.incomplete_policy or "report"
        if state == "INCOMPLETE" and policy == "skip":
            return None
        if not self.models_ready():
            if study_uid not in self._waiting:
                log.warning("study %s waits: no active model packages (mammo-node models ...)", study_ref(study_uid))
            self._waiting.add(study_uid)
            return None
        reason = "resumed after a restart" if state == PROCESSING else "processing started"
        if not self.journal.transition(study_uid, state, PROCESSING, reason):
            return None
        start = time.perf_counter()
        selection = study.selection or {"positions": {}, "missing": list(POSITIONS)}
        missing = list(selection.get("missing", []))
        try:
            if missing and policy == "report":
                result = {"status": "incomplete", "missing_views": missing, "breasts": {}, "disagreements": [],
                          "report": None, "models": {}, "preliminary": True}
            else:
                result = self._run_models(study_uid, selection, missing)
        except StudyFailed as exc:
            return self._fail(study_uid, str(exc))
        except Exception as exc:  # a model or file error fails the study, never the node
            return self._fail(study_uid, f"{type(exc).__name__}: {exc}")
        result["seconds"] = round(time.perf_counter() - start, 3)
        versions = ", ".join(f"{k} {v}" for k, v in sorted(result["models"].items())) or "no models run"
        finished_at = time.time()
        try:
            outputs = self._plan_outputs(study_uid, result, finished_at)
        except Exception as exc:  # unreadable headers, a bug: keep the study visible and retryable
            log.exception("study %s: planning its outputs failed", study_ref(study_uid))
            return self._fail(study_uid, f"planning the outputs failed ({type(exc).__name__}: {exc})")
        self.journal.finish_study(study_uid, result, f"processed with {versions}"
                                  + (f"; {len(outputs)} outputs queued" if outputs else ""), outputs, now=finished_at)
        log.info("study %s DONE in %.2f s (%s)", study_ref(study_uid), result["seconds"], versions)
        if self.on_done is not None:
            self.on_done(study_uid, DONE, result)
        return DONE

    def _plan_outputs(self, study_uid: str, result: dict[str, Any], created_at: float) -> list[dict[str, Any]]:
        """The outbox rows of this result (rendered later, on the delivery threads). A result that
        changes an earlier, delivered one records what it replaces (node.outputs.amend)."""
        if self.outputs is None or not self.outputs.enabled:
            return []
        replaces = replaced_outputs(self.journal.get_result(study_uid), result, study_uid,
                                    delivered_identities(self.journal, study_uid))
        if replaces:
            result["replaces"] = replaces
        source = selected_sources(self.journal, self.data_dir, study_uid)
        if source is None:
            log.warning("study %s: no selected image to reference, no outputs sent", study_ref(study_uid))
            return []
        return self.outputs.plan(source, result, created_at)

    def _fail(self, study_uid: str, reason: str) -> str:
        self.journal.transition(study_uid, PROCESSING, FAILED, reason[:500])
        log.error("study %s FAILED: %s", study_ref(study_uid), reason)
        if self.on_done is not None:
            self.on_done(study_uid, FAILED, None)
        return FAILED

    def _run_models(self, study_uid: str, selection: dict[str, Any], missing: list[str]) -> dict[str, Any]:
        from node.inference.engine import ModelUnavailable

        try:
            models = self.engine.snapshot()
            vm, rg = models.versamammo, models.mammorg
        except ModelUnavailable as exc:
            raise StudyFailed(str(exc)) from None
        paths = {i.id: self.data_dir / i.path for i in self.journal.study_instances(study_uid)}
        positions = selection.get("positions", {})
        if not positions:
            raise StudyFailed("no view of the study serves one of the four positions")
        datasets = {}
        for position, chosen in positions.items():
            try:
                datasets[position] = pydicom.dcmread(paths[chosen["instance_id"]])
            except Exception as exc:
                raise StudyFailed(f"{position}: the stored image cannot be read ({type(exc).__name__}: {exc})") from None
        timings: dict[str, float] = {}
        mark = time.perf_counter()
        arrays: dict[str, dict[str, np.ndarray]] = {}
        for name, pre_dict in (("versamammo", vm.preprocessing), ("mammorg", rg.preprocessing)):
            pre = PreprocessConfig.from_dict(pre_dict)
            if name == "mammorg" and pre == PreprocessConfig.from_dict(vm.preprocessing):
                arrays[name] = arrays["versamammo"]
                continue
            arrays[name] = {}
            for position, ds in datasets.items():
                try:
                    arrays[name][position] = preprocess(ds, pre)
                except Exception as exc:
                    raise StudyFailed(f"{position}: preprocessing failed ({type(exc).__name__}: {exc})") from None
        order = [p for p in POSITIONS if p in datasets]
        timings["preprocess"] = round(time.perf_counter() - mark, 4)
        mark = time.perf_counter()
        out = vm.run(np.stack([arrays["versamammo"][p] for p in order]))
        per_view = {p: {"birads": out.birads[i], "density": out.density[i], "findings": out.findings[i]}
                    for i, p in enumerate(order)}
        timings["versamammo"] = round(time.perf_counter() - mark, 4)
        mark = time.perf_counter()
        views = np.zeros((1, len(POSITIONS), *next(iter(arrays["mammorg"].values())).shape), dtype=np.float32)
        present = np.zeros((1, len(POSITIONS)), dtype=bool)
        for p in order:
            views[0, POSITIONS.index(p)] = arrays["mammorg"][p]
            present[0, POSITIONS.index(p)] = True
        report = rg.generate(views, present)[0]
        timings["mammorg"] = round(time.perf_counter() - mark, 4)
        parsed = parse_report(report.text)
        result = build_result(report.text, parsed, breast_probabilities(per_view), vm.labels, models.versions,
                              missing, sources=reporting_sources(self.sources, rg.manifest.data.get("reporting")))
        result["timings"] = timings
        return result
