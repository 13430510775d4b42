"""MammoRG -> a prefix graph, a KV-cache decoder graph, the token-embedding table and the tokenizer.

* ``mammorg_prefix.onnx``: four preprocessed views and their present mask -> the LM's input
  context (prompt embeddings around the soft-token prefix). The frozen VersaMammo student, the
  graph-node features, the adjacency and the report bank are constants inside it.
* ``mammorg_decoder.onnx``: one merged graph for prefill (empty past) and decoding (one token),
  with a ``cache_index`` input that reorders/expands the past on the device (beam search).
  Only the last position's logits leave it.
* ``embed_tokens.npy``: the LM's input embedding table (generated ids -> decoder inputs).
* ``tokenizer/`` (``tokenizer.json`` with the atomic lexicon terms) and the generation settings.

Parity: context and prefill logits within 1e-3 of torch, and greedy generation through the node's
ONNX Runtime loop token-identical to ``MammoRG.generate`` on the golden studies.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.onnx_io import export_graph, io_spec
from export.versamammo import FP32_TOLERANCE, ParityError, compare
from models.mammorg.model import MammoRG, view_tokens
from models.mammorg.config import VIEWS, preprocess_config


class PrefixGraph(nn.Module):
    """(views (B, 4, 3, S, S), present (B, 4) bool) -> context (B, L0, H).

    The RGCN's output depends on no input: it is computed once here and becomes a constant of
    the graph (the RGCN's weights do not ship; 70 node vectors do).
    """

    def __init__(self, model: MammoRG) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():
            self.register_buffer("nodes", model.encoded_nodes().detach().clone())

    def forward(self, views: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        b, v = views.shape[:2]
        flat = view_tokens(self.model.vision, views.flatten(0, 1), self.model.cfg.vision_pool)  # (B*4, T, D)
        raw = flat.reshape(b, v, flat.shape[1], flat.shape[2])
        return self.model.prompt_embeddings(self.model.prefix(raw, present, self.nodes))


class DecoderGraph(nn.Module):
    """The causal LM with an explicit cache: see the module docstring for inputs and outputs."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self.layers = int(lm.config.num_hidden_layers)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, cache_index: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        pairs = [(past[2 * i].index_select(0, cache_index), past[2 * i + 1].index_select(0, cache_index))
                 for i in range(self.layers)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.lm.config)
        start = past[0].shape[2]
        positions = (torch.arange(inputs_embeds.shape[1]) + start).unsqueeze(0).expand(inputs_embeds.shape[0], -1)
        out = self.lm.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=positions,
                            past_key_values=cache, use_cache=True)
        logits = self.lm.lm_head(out.last_hidden_state[:, -1])
        present: list[torch.Tensor] = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (logits.float(), *present)


def decoder_spec(lm: nn.Module) -> dict[str, Any]:
    cfg = lm.config
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return {"layers": int(cfg.num_hidden_layers), "kv_heads": int(getattr(cfg, "num_key_value_heads", heads)),
            "head_dim": head_dim, "hidden": int(cfg.hidden_size), "vocab": int(cfg.vocab_size), "dtype": "float32"}


def export_mammorg(model: MammoRG, tokenizer: Any, out: Path, golden_views: np.ndarray,
                   golden_present: np.ndarray) -> dict[str, Any]:
    """Write the graphs, table, tokenizer and ``golden/mammorg.npz`` under ``out``; return manifest fields.

    ``golden_views`` (N, 4, 3, S, S) and ``golden_present`` (N, 4): the golden studies (real
    preprocessed phantom views; let one of them miss a view to cover that path).
    """
    import onnxruntime as ort

    from node.inference.mammorg import KVDecoder, MammoRGRunner
    from node.inference.session import SessionSettings
    from models.package.manifest import Manifest

    model = copy.deepcopy(model).float().eval()
    if model.vision is None:
        raise ValueError("export needs the MammoRG with its vision student attached (load_mammorg gives it)")
    spec = decoder_spec(model.lm)
    size = model.vision.cfg.student_input
    views = torch.from_numpy(np.ascontiguousarray(golden_views, dtype=np.float32))
    present = torch.from_numpy(np.asarray(golden_present, dtype=bool))
    if tuple(views.shape[1:]) != (len(VIEWS), 3, size, size):
        raise ValueError(f"golden views must be (N, 4, 3, {size}, {size}), got {tuple(views.shape)}")

    with torch.no_grad():
        context = PrefixGraph(model)(views, present)
        raw = model.encode_views(views, present)
        expected_ids = model.generate(raw, present, num_beams=1)
        reference_context = model.prompt_embeddings(model.prefix(raw, present))
    if not torch.allclose(context, reference_context, rtol=1e-4, atol=1e-5):
        raise ParityError("the prefix graph wrapper differs from MammoRG.prefix (missing-view handling?)")

    prefix_path = export_graph(PrefixGraph(model), (views[:2], present[:2]), out / "mammorg_prefix.onnx",
                               ["views", "present"], ["context"],
                               {"views": {0: "batch"}, "present": {0: "batch"}, "context": {0: "batch"}})
    traced_inputs = [i["name"] for i in io_spec(prefix_path)["inputs"]]
    if traced_inputs != ["views", "present"]:
        raise ParityError(f"the prefix graph's inputs are {traced_inputs}: tracing froze a data-dependent branch")
    past_names = [f"past.{i}.{kv}" for i in range(spec["layers"]) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(spec["layers"]) for kv in ("key", "value")]
    dyn: dict[str, dict[int, str]] = {"inputs_embeds": {0: "batch", 1: "sequence"},
                                      "attention_mask": {0: "batch", 1: "total"}, "cache_index": {0: "batch"},
                                      "logits": {0: "batch"}}
    dyn.update({n: {0: "past_batch", 2: "past"} for n in past_names})
    dyn.update({n: {0: "batch", 2: "total"} for n in present_names})
    example_past = tuple(torch.randn(2, spec["kv_heads"], 3, spec["head_dim"]) for _ in past_names)
    example = (torch.randn(2, 2, spec["hidden"]), torch.ones(2, 5, dtype=torch.long), torch.arange(2), *example_past)
    decoder_path = export_graph(DecoderGraph(model.lm), example, out / "mammorg_decoder.onnx",
                                ["inputs_embeds", "attention_mask", "cache_index", *past_names],
                                ["logits", *present_names], dyn)
    np.save(out / "embed_tokens.npy", model.lm.get_input_embeddings().weight.detach().float().numpy())
    tokenizer.save_pretrained(out / "tokenizer")

    # Parity 1: the prefix graph and the prefill logits.
    cpu = ["CPUExecutionProvider"]
    prefix_session = ort.InferenceSession(str(prefix_path), providers=cpu)
    onnx_context = prefix_session.run(["context"], {"views": views.numpy(), "present": present.numpy()})[0]
    problems = compare({"context": reference_context.numpy()}, {"context": onnx_context}, **FP32_TOLERANCE)
    decoder = KVDecoder(ort.InferenceSession(str(decoder_path), providers=cpu), spec)
    n = views.shape[0]
    logits, _ = decoder.step(onnx_context, onnx_context.shape[1], np.arange(n), decoder.empty_cache(n))
    with torch.no_grad():
        ref_logits = model.lm(inputs_embeds=reference_context).logits[:, -1].numpy()
    problems += compare({"logits": ref_logits}, {"logits": logits}, **FP32_TOLERANCE)
    if problems:
        raise ParityError("MammoRG graphs differ from torch: " + "; ".join(problems))

    fields = {
        "kind": "mammorg",
        "graphs": {"prefix": {"file": prefix_path.name, "precision": "fp32", "tolerance": FP32_TOLERANCE,
                              **io_spec(prefix_path)},
                   "decoder": {"file": decoder_path.name, "precision": "fp32", "tolerance": FP32_TOLERANCE,
                               **io_spec(decoder_path)}},
        "decoder": spec,
        "embed_tokens": "embed_tokens.npy",
        "tokenizer": "tokenizer/tokenizer.json",
        "generation": {"eos_id": model.eos_id, "pad_id": model.pad_id, "max_new_tokens": model.cfg.max_new_tokens,
                       "num_beams": model.cfg.num_beams, "length_penalty": 1.0},
        "preprocessing": preprocess_config(model.cfg, model.vision.cfg).to_dict(),
        "views": list(VIEWS),
        "golden": {"file": "golden/mammorg.npz"},
        "model": {"size": model.cfg.size, "knowledge": model.cfg.knowledge, "prefix_tokens": model.cfg.prefix_tokens,
                  "vision": model.vision.cfg.student_backbone, "lm": model.lm.config.model_type,
                  "lm_parameters": int(sum(p.numel() for p in model.lm.parameters()))},
    }
    # Parity 2: greedy generation through the node's own loop, token for token.
    golden = out / "golden" / "mammorg.npz"
    golden.parent.mkdir(parents=True, exist_ok=True)
    width = max((len(row) for row in expected_ids), default=0)
    ids = np.full((n, width), -1, dtype=np.int64)
    for i, row in enumerate(expected_ids):
        ids[i, : len(row)] = row
    np.savez_compressed(golden, views=views.numpy(), present=present.numpy(), **{"expected.context": reference_context.numpy(),
                        "expected.token_ids": ids})
    runner = MammoRGRunner(out, Manifest(name="export-check", kind="mammorg", version="0", files={},
                                         data=fields), SessionSettings(providers=("cpu",)), warm_up=False)
    got = runner.generate_ids(views.numpy(), present.numpy())
    if got != expected_ids:
        first = next(i for i, (a, b) in enumerate(zip(got, expected_ids)) if a != b)
        raise ParityError(f"greedy generation through ONNX Runtime differs from torch on golden study {first}")
    return fields
