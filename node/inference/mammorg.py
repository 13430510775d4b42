"""MammoRG through ONNX Runtime: four views -> soft-token context -> report text.

Two graphs from the package: ``prefix`` (views (B, 4, 3, S, S) float32 and ``present`` (B, 4)
bool -> ``context`` (B, L0, H): the prompt embeddings around the soft-token prefix) and
``decoder`` (``inputs_embeds`` (B, L, H), ``attention_mask`` (B, P + L) int64, ``cache_index``
(B,) int64 and ``past.<i>.key/value`` (B', kv_heads, P, head_dim) -> last-position ``logits``
(B, V) and ``present.<i>.key/value``). ``cache_index`` selects which past row each new row
continues, inside the graph: beam search reorders its cache there, on the device, and the first
decoding step of a beam expands each study's prefilled cache to its beams the same way.

The key/value cache stays in ONNX Runtime values between steps (IO binding), so on a GPU it never
crosses to the host; only the (B, V) logits do. Token embeddings for the generated ids come from
the package's ``embed_tokens.npy`` (a table lookup is all the LM's input layer does).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from node.inference.session import SessionSettings, device_of, open_session
from models.package.manifest import Manifest


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; defaults come from the package's ``generation`` block."""

    max_new_tokens: int
    num_beams: int = 1
    length_penalty: float = 1.0


@dataclass(frozen=True)
class Report:
    """One study's generated report."""

    text: str
    token_ids: list[int]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class KVDecoder:
    """The decoder graph plus the cache that travels between its calls as ORT values."""

    def __init__(self, session: ort.InferenceSession, spec: dict[str, Any]) -> None:
        self.session = session
        self.layers = int(spec["layers"])
        self.kv_heads, self.head_dim = int(spec["kv_heads"]), int(spec["head_dim"])
        self.dtype = np.dtype(spec.get("dtype", "float32"))
        self.past_names = [f"past.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]
        self.output_names = ["logits"] + [f"present.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]
        self.device = device_of(session)

    def empty_cache(self, batch: int) -> list[ort.OrtValue]:
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.dtype)
        return [ort.OrtValue.ortvalue_from_numpy(empty, self.device, 0) for _ in self.past_names]

    def step(self, embeds: np.ndarray, total_len: int, cache_index: np.ndarray, cache: list[ort.OrtValue]
             ) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """Run ``embeds`` (B, L, H) after the cached rows picked by ``cache_index``; (logits, new cache)."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, dtype=self.dtype))
        binding.bind_cpu_input("attention_mask", np.ones((embeds.shape[0], total_len), dtype=np.int64))
        binding.bind_cpu_input("cache_index", np.ascontiguousarray(cache_index, dtype=np.int64))
        for name, value in zip(self.past_names, cache):
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy().astype(np.float32), list(outputs[1:])


class MammoRGRunner:
    """One loaded MammoRG package: ``generate(views, present)`` returns one report per study."""

    def __init__(self, root: Path, manifest: Manifest, settings: SessionSettings, warm_up: bool = True) -> None:
        if manifest.kind != "mammorg":
            raise ValueError(f"{manifest.ref} is a {manifest.kind} package, not mammorg")
        from tokenizers import Tokenizer

        self.root, self.manifest = Path(root), manifest
        graphs = manifest.graphs
        self.prefix_session = open_session(self.root / graphs["prefix"]["file"], settings)
        self.decoder = KVDecoder(open_session(self.root / graphs["decoder"]["file"], settings),
                                 manifest.data["decoder"])
        self.embed_tokens = np.load(self.root / manifest.data["embed_tokens"], mmap_mode="r")
        self.tokenizer = Tokenizer.from_file(str(self.root / manifest.data["tokenizer"]))
        gen = manifest.data["generation"]
        self.eos_id, self.pad_id = int(gen["eos_id"]), int(gen["pad_id"])
        self.defaults = GenerationSettings(int(gen["max_new_tokens"]), int(gen.get("num_beams", 1)),
                                           float(gen.get("length_penalty", 1.0)))
        self.preprocessing: dict[str, Any] = manifest.data["preprocessing"]
        self.input_size = tuple(self.preprocessing["size"])
        if warm_up:
            views = np.zeros((1, 4, 3, *self.input_size), dtype=np.float32)
            self.generate_ids(views, np.ones((1, 4), dtype=bool), GenerationSettings(2))

    # ------------------------------------------------------------------ public
    def context(self, views: np.ndarray, present: np.ndarray) -> np.ndarray:
        """(B, 4, 3, S, S), (B, 4) -> (B, L0, H) prompt + soft-token embeddings."""
        views = np.ascontiguousarray(views, dtype=np.float32)
        expected = (4, 3, *self.input_size)
        if views.ndim != 5 or views.shape[1:] != expected:
            raise ValueError(f"views must be (B, {', '.join(map(str, expected))}), got {views.shape}")
        present = np.asarray(present, dtype=bool).reshape(views.shape[0], 4)
        return self.prefix_session.run(["context"], {"views": views, "present": present})[0]

    def generate(self, views: np.ndarray, present: np.ndarray, settings: GenerationSettings | None = None
                 ) -> list[Report]:
        """Reports for a batch of studies (same result as one by one: contexts never need padding)."""
        ids = self.generate_ids(views, present, settings)
        return [Report(self.tokenizer.decode(row, skip_special_tokens=True), row) for row in ids]

    def generate_ids(self, views: np.ndarray, present: np.ndarray, settings: GenerationSettings | None = None
                     ) -> list[list[int]]:
        settings = settings or self.defaults
        context = self.context(views, present)
        if settings.num_beams <= 1:
            return self._greedy(context, settings.max_new_tokens)
        return self._beam(context, settings)

    # ------------------------------------------------------------------ decoding
    def _embed(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.embed_tokens[ids.reshape(-1)]).reshape(len(ids), 1, -1)

    def _greedy(self, context: np.ndarray, max_new: int) -> list[list[int]]:
        batch, length = context.shape[:2]
        rows = np.arange(batch)
        logits, cache = self.decoder.step(context, length, rows, self.decoder.empty_cache(batch))
        done = np.zeros(batch, dtype=bool)
        out: list[list[int]] = [[] for _ in range(batch)]
        for step in range(max_new):
            token = logits.argmax(axis=-1)
            token[done] = self.pad_id
            for i in np.flatnonzero(~done):
                if token[i] == self.eos_id:
                    done[i] = True
                else:
                    out[i].append(int(token[i]))
            if done.all() or step == max_new - 1:
                break
            logits, cache = self.decoder.step(self._embed(token), length + step + 1, rows, cache)
        return out

    def _beam(self, context: np.ndarray, settings: GenerationSettings) -> list[list[int]]:
        """Beam search with a length penalty (score = sum log p / length ** penalty); per study, stop
        once no running beam can beat the worst of ``num_beams`` finished hypotheses."""
        k, lp, max_new = settings.num_beams, settings.length_penalty, settings.max_new_tokens
        batch, length = context.shape[:2]
        logits, cache = self.decoder.step(context, length, np.arange(batch), self.decoder.empty_cache(batch))
        logp = _log_softmax(logits)                                            # (B, V)
        vocab = logp.shape[1]
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
        closed = np.zeros(batch, dtype=bool)
        # The first step: each study's k best first tokens from its one prefilled row.
        beams: list[list[int]] = []
        scores = np.zeros((batch, k))
        parents = np.repeat(np.arange(batch), k)
        for b in range(batch):
            order = np.argsort(-logp[b], kind="stable")
            picked = []
            for token in order:
                if len(picked) == k:
                    break
                if token == self.eos_id:
                    self._add_finished(finished[b], [], float(logp[b, token]), k, lp)
                    continue
                picked.append(int(token))
            for j, token in enumerate(picked):
                beams.append([token])
                scores[b, j] = logp[b, token]
        for step in range(1, max_new):
            last = np.array([beam[-1] for beam in beams], dtype=np.int64)
            logits, cache = self.decoder.step(self._embed(last), length + step, parents, cache)
            cand = scores.reshape(-1, 1) + _log_softmax(logits)                # (B*k, V)
            cand = cand.reshape(batch, k * vocab)
            new_beams, new_parents = [], []
            new_scores = np.zeros((batch, k))
            for b in range(batch):
                top = np.argsort(-cand[b], kind="stable")[: 2 * k]
                chosen = 0
                for rank, flat in enumerate(top):
                    src, token = divmod(int(flat), vocab)
                    row = b * k + src
                    if closed[b]:
                        token = self.pad_id
                    elif token == self.eos_id:
                        if rank < k:
                            self._add_finished(finished[b], beams[row], float(cand[b, flat]), k, lp)
                        continue
                    new_beams.append(beams[row] + [token])
                    new_parents.append(row)
                    new_scores[b, chosen] = cand[b, flat]
                    chosen += 1
                    if chosen == k:
                        break
                if not closed[b] and len(finished[b]) == k:
                    best_running = new_scores[b].max() / (step + 1) ** lp
                    closed[b] = best_running <= min(s for s, _ in finished[b])
            beams, parents, scores = new_beams, np.array(new_parents, dtype=np.int64), new_scores
            if closed.all():
                break
        results = []
        for b in range(batch):
            if not closed[b]:
                for j in range(k):
                    self._add_finished(finished[b], beams[b * k + j], float(scores[b, j]), k, lp)
            results.append(max(finished[b], key=lambda item: item[0])[1] if finished[b] else [])
        return results

    @staticmethod
    def _add_finished(pool: list[tuple[float, list[int]]], ids: list[int], logp_sum: float, k: int,
                      lp: float) -> None:
        score = logp_sum / max(len(ids) + 1, 1) ** lp   # +1: the end-of-sequence token counts
        pool.append((score, list(ids)))
        pool.sort(key=lambda item: -item[0])
        del pool[k:]

