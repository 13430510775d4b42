"""From a closed study to its structured result: preprocessing, both models, the report parser.

Studies arrive from the assembler (COMPLETE, or INCOMPLETE under ``incomplete_policy``) and are
processed one at a time by a worker thread (ONNX Runtime already uses every core inside one
study). For each study:

1. COMPLETE/INCOMPLETE -> PROCESSING (a conditional update: a study is taken once);
2. one snapshot of the active model versions, used for the whole study (node.inference.engine);
3. the selected view of each position is preprocessed exactly as the package's manifest says
   (models.preprocess, the implementation training used);
4. VersaMammo per view, averaged per breast; MammoRG's report; ``models.report.parse`` reads it;
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

Speculative runs (``inference.speculative_runs``, 0 = off): while a study with its four views
settles, up to that many threads preprocess its selected images and run both models, keeping the
model output in memory only. When the study closes COMPLETE, the worker uses that output if the
selection it closed with is the one the run saw (same instance in each position) and the active
model versions are the same; otherwise (a straggler or a retake changed the selection, a package
was activated) it is discarded and the study is processed as usual. A run the worker finds still
going for the study it takes is waited for and counts as that study's processing. Nothing of a
speculative run reaches the journal or a destination before the close, and nothing survives a
restart (the study is then processed from scratch). A speculative run starts only while no closed
study waits in the queue or is being processed, and gives up at its next stage (after reading,
after preprocessing, after VersaMammo) when one arrives, so closed studies never wait for one.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import pydicom

from models.preprocess import PreprocessConfig, normalize, prepare_uint8
from models.preprocess.geometry import ModelGeometry
from models.report.parse import parse_report
from node.inference.engine import InferenceEngine
from node.journal import Journal
from node.logref import study_ref
from node.marks import image_marks, lesion_map_record, mark_settings
from node.results import breast_probabilities, build_result, reporting_sources
from node.outputs.prepare import OutputPreparer
from node.study_result import CadMark, LesionMap, Localization, StudyResult
from node.views import POSITIONS

log = logging.getLogger("mammo_node.pipeline")

PROCESSING, DONE, FAILED = "PROCESSING", "DONE", "FAILED"


class _Cancelled(Exception):
    """A speculative run gave way (closed work arrived, or its selection changed)."""


def selection_key(selection: dict[str, Any] | None) -> tuple[Any, ...]:
    """What a result depends on in a selection: the instance chosen for each position."""
    positions = (selection or {}).get("positions", {})
    return tuple(sorted((p, int(c["instance_id"]), str(c.get("sop_instance_uid"))) for p, c in positions.items()))


class _Speculation:
    """One speculative run of a study for one selection."""

    def __init__(self, study_uid: str, selection: dict[str, Any]) -> None:
        self.study_uid = study_uid
        self.selection = selection
        self.key = selection_key(selection)
        self.stale = False      # the selection changed, or the study was taken without it
        self.adopted = False    # the worker waits for it: it is that study's processing now
        self.started = False
        self.done = threading.Event()
        self.result: StudyResult | None = None
        self.versions: dict[str, str] | None = None
        self.seconds = 0.0


class StudyFailed(Exception):
    """A study cannot be processed; the message is recorded as its reason."""


class Pipeline:
    """The processing stage of a node (see the module docstring)."""

    def __init__(self, journal: Journal, engine: InferenceEngine, data_dir: Any, rescan_seconds: float = 5.0,
                 outputs: OutputPreparer | None = None,
                 on_done: Callable[[str, str, StudyResult | None], None] | None = None,
                 sources: dict[str, str] | None = None, speculative_runs: int = 0,
                 mark_threshold: float | None = None, max_marks_per_image: int = 3) -> None:
        self.journal = journal
        self.mark_threshold = mark_threshold  # None: the VersaMammo package's own (node.marks)
        self.max_marks_per_image = max_marks_per_image
        self.speculative_runs = speculative_runs
        self._spec: dict[str, _Speculation] = {}
        self._spec_cond = threading.Condition()
        self._spec_threads: list[threading.Thread] = []
        self._spec_stop = False
        self._current: str | None = None  # the closed study the worker is processing
        self.speculation_stats = {"started": 0, "kept": 0, "discarded": 0, "gave_way": 0}
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
        self._spec_stop = False
        for n in range(self.speculative_runs):
            thread = threading.Thread(target=self._speculate_loop, name=f"speculative-{n}", daemon=True)
            thread.start()
            self._spec_threads.append(thread)
        for uid, state in sorted(pending, key=lambda item: item[1] != PROCESSING):
            self.submit(uid, state)
        return len(pending)

    def stop(self, timeout: float = 30.0) -> None:
        with self._spec_cond:
            self._spec_stop = True
            for spec in self._spec.values():
                spec.stale = True
            self._spec_cond.notify_all()
        for thread in self._spec_threads:
            thread.join(timeout)
        self._spec_threads = []
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, study_uid: str, state: str) -> None:
        """Assembler listener: a study closed in ``state``."""
        self.idle.clear()
        self._queue.put((study_uid, state))
        with self._spec_cond:
            self._spec_cond.notify_all()  # a speculative run of another study gives way

    # ------------------------------------------------------------------ speculative runs
    def speculate(self, study_uid: str, selection: dict[str, Any]) -> None:
        """Assembler progress listener: ``study_uid`` still receives, with this selection. Queue a
        speculative run for it unless one for the same selection exists (see the module docstring)."""
        if self.speculative_runs <= 0 or selection.get("missing") or not selection.get("positions"):
            return
        if not self.models_ready():
            return
        with self._spec_cond:
            current = self._spec.get(study_uid)
            if current is not None and current.key == selection_key(selection) and not current.stale:
                return
            if current is not None:
                current.stale = True  # a straggler changed the selection: that run is wasted
            self._spec[study_uid] = _Speculation(study_uid, selection)
            self._spec_cond.notify_all()

    def _closed_work(self, study_uid: str | None = None) -> bool:
        """Whether a closed study (other than ``study_uid``) waits in the queue or is processed."""
        with self._queue.mutex:
            queued = [item for item in self._queue.queue if item is not None]
        if any(uid != study_uid for uid, _ in queued):
            return True
        return self._current is not None and self._current != study_uid

    def _next_speculation(self) -> _Speculation | None:
        for spec in self._spec.values():
            if not spec.started and not spec.stale:
                return spec
        return None

    def _speculate_loop(self) -> None:
        while True:
            with self._spec_cond:
                while True:
                    if self._spec_stop:
                        return
                    spec = self._next_speculation()
                    if spec is not None and not self._closed_work():
                        spec.started = True
                        break
                    self._spec_cond.wait(timeout=1.0)
            if not self._still_receiving(spec):
                continue
            self.speculation_stats["started"] += 1
            start = time.perf_counter()

            def cancelled(spec: _Speculation = spec) -> bool:
                return spec.stale or self._spec_stop or (not spec.adopted and self._closed_work(spec.study_uid))

            try:
                spec.result, spec.versions = self._run_models(spec.study_uid, spec.selection, [], cancelled)
                spec.seconds = time.perf_counter() - start
            except _Cancelled:
                with self._spec_cond:
                    if not spec.stale and not spec.adopted and not self._spec_stop:
                        spec.started = False  # gave way to closed work: run again when the queue is idle
                        self.speculation_stats["gave_way"] += 1
                        continue
            except Exception as exc:  # the worker will process the study and record what fails
                log.info("speculative run of %s failed (%s: %s); the study is processed at its close",
                         study_ref(spec.study_uid), type(exc).__name__, exc)
            spec.done.set()

    def _take_speculation(self, study_uid: str, selection: dict[str, Any]) -> _Speculation | None:
        """The finished speculative run of this study for exactly this selection, else None (a run
        still going for it is waited for; any other is discarded)."""
        with self._spec_cond:
            spec = self._spec.pop(study_uid, None)
            if spec is None:
                return None
            if spec.key != selection_key(selection) or spec.stale:
                spec.stale = True
                self.speculation_stats["discarded"] += 1
                return None
            if not spec.started:
                spec.stale = True  # not begun: the worker runs the models itself, no need to wait
                return None
            spec.adopted = True
        spec.done.wait()
        if spec.result is None:
            return None
        return spec

    def _still_receiving(self, spec: _Speculation) -> bool:
        """A run queued just as its study closed (and was taken) is dropped, not run."""
        study = self.journal.get_study(spec.study_uid)
        if study is not None and study.state == "RECEIVING":
            return True
        with self._spec_cond:
            if self._spec.get(spec.study_uid) is spec:
                del self._spec[spec.study_uid]
        spec.stale = True
        spec.done.set()
        return False

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
            self._current = item[0]
            try:
                self.process(*item)
            except Exception:  # never let one study stop the worker
                log.exception("unexpected error processing %s", study_ref(item[0]))
            finally:
                self._current = None
            if self._queue.empty():
                self.idle.set()
                with self._spec_cond:
                    self._spec_cond.notify_all()  # speculative runs may start

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
        kept = ""
        try:
            spec = self._take_speculation(study_uid, selection) if not missing else None
            if spec is not None and spec.versions != self._active_versions():
                self.speculation_stats["discarded"] += 1
                spec = None
            if spec is not None:
                result = spec.result
                assert result is not None
                start -= spec.seconds  # the processing time includes the speculative run
                self.speculation_stats["kept"] += 1
                kept = " (speculative run kept: same images, same models)"
            elif missing and policy == "report":
                result = StudyResult.incomplete(missing)
            else:
                result, _ = self._run_models(study_uid, selection, missing)
        except StudyFailed as exc:
            return self._fail(study_uid, str(exc))
        except Exception as exc:  # a model or file error fails the study, never the node
            return self._fail(study_uid, f"{type(exc).__name__}: {exc}")
        if selection.get("missing_why"):  # e.g. a position only a For Processing image filled
            result = replace(result, missing_why=dict(selection["missing_why"]))
        seconds = round(time.perf_counter() - start, 3)
        result = replace(result, seconds=seconds)
        versions = ", ".join(f"{k} {v}" for k, v in sorted(result.models.items())) or "no models run"
        finished_at = time.time()
        outputs: list[dict[str, Any]] = []
        try:
            if self.outputs is not None:  # records what the result replaces and the SRs planned for it
                result, outputs = self.outputs.plan_study(self.journal, self.data_dir, study_uid, result, finished_at)
        except Exception as exc:  # unreadable headers, a bug: keep the study visible and retryable
            log.exception("study %s: planning its outputs failed", study_ref(study_uid))
            return self._fail(study_uid, f"planning the outputs failed ({type(exc).__name__}: {exc})")
        self.journal.finish_study(study_uid, result.to_json(), f"processed with {versions}{kept}"
                                  + (f"; {len(outputs)} outputs queued" if outputs else ""), outputs, now=finished_at)
        log.info("study %s DONE in %.2f s (%s)", study_ref(study_uid), seconds, versions)
        if self.on_done is not None:
            self.on_done(study_uid, DONE, result)
        return DONE

    def _fail(self, study_uid: str, reason: str) -> str:
        self.journal.transition(study_uid, PROCESSING, FAILED, reason[:500])
        log.error("study %s FAILED: %s", study_ref(study_uid), reason)
        if self.on_done is not None:
            self.on_done(study_uid, FAILED, None)
        return FAILED

    def _active_versions(self) -> dict[str, str]:
        return dict(self.engine.registry.active())

    def _run_models(self, study_uid: str, selection: dict[str, Any], missing: list[str],
                    cancelled: Callable[[], bool] | None = None) -> tuple[StudyResult, dict[str, str]]:
        """The result of the models on the selected images, and the model versions it used.
        ``cancelled`` (speculative runs) is asked between stages; True raises _Cancelled."""
        from node.inference.engine import ModelUnavailable

        def check() -> None:
            if cancelled is not None and cancelled():
                raise _Cancelled()

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
        check()
        timings: dict[str, float] = {}
        mark = time.perf_counter()
        arrays: dict[str, dict[str, np.ndarray]] = {}
        geometries: dict[str, tuple[ModelGeometry, tuple[int, int]]] = {}  # VersaMammo's, for CAD marks
        for name, pre_dict in (("versamammo", vm.preprocessing), ("mammorg", rg.preprocessing)):
            pre = PreprocessConfig.from_dict(pre_dict)
            if name == "mammorg" and pre == PreprocessConfig.from_dict(vm.preprocessing):
                arrays[name] = arrays["versamammo"]
                continue
            arrays[name] = {}
            for position, ds in datasets.items():
                try:
                    prepared = prepare_uint8(ds, pre)
                    arrays[name][position] = normalize(prepared.image, pre)
                    if name == "versamammo":
                        geometries[position] = (ModelGeometry.of(prepared, pre), prepared.source_shape)
                except Exception as exc:
                    raise StudyFailed(f"{position}: preprocessing failed ({type(exc).__name__}: {exc})") from None
        order = [p for p in POSITIONS if p in datasets]
        timings["preprocess"] = round(time.perf_counter() - mark, 4)
        check()
        mark = time.perf_counter()
        out = vm.run(np.stack([arrays["versamammo"][p] for p in order]))
        per_view = {p: {"birads": out.birads[i], "density": out.density[i], "findings": out.findings[i]}
                    for i, p in enumerate(order)}
        timings["versamammo"] = round(time.perf_counter() - mark, 4)
        check()
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
        localization = Localization.from_json(mark_settings(vm.localization, self.mark_threshold,
                                                            self.max_marks_per_image))
        result = replace(result, localization=localization)
        if localization.attempted and out.lesion_map is not None:
            assert localization.mark_threshold is not None and localization.max_marks_per_image is not None
            size = tuple(vm.input_size)
            # As the result keeps them (rounded: what the encoders write), and the map of each image
            # for the heatmap secondary capture.
            marks = tuple(CadMark.from_json(m.to_dict()) for i, p in enumerate(order) for m in image_marks(
                p, out.lesion_map[i], geometries[p][0], size, geometries[p][1], out.findings[i],
                vm.labels["findings"], localization.mark_threshold, localization.max_marks_per_image))
            maps = {p: LesionMap.from_json(lesion_map_record(out.lesion_map[i], geometries[p][0], size))
                    for i, p in enumerate(order)}
            result = replace(result, marks=marks, lesion_maps=maps)
        return replace(result, timings=timings), dict(models.versions)
