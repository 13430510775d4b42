"""MammoRG: a screening report from four mammography views, with clinical knowledge.

Data flow (one study):

1. Each view goes through the frozen VersaMammo student; its final feature grid is the view's
   image tokens (16x16x2048 -> 256 tokens at full size). A learned embedding stands in for the
   tokens of a missing view.
2. Knowledge: the lexicon graph (``mammorg_knowledge``) is encoded by a relational GCN; each
   view's image tokens attend over the nodes, giving one graph token per view; the pooled
   four-view feature attends over the bank of training-report embeddings, giving one report token.
3. Three projectors (image, graph, report) map into the language model's hidden size, and the
   prefix is laid out as R-CC, R-MLO, L-CC, L-MLO, each [graph token, image tokens], then the
   report token: 4 x 257 + 1 = 1029 soft tokens at full size. It replaces ``<image>`` in the prompt.
4. A causal LM (Hugging Face; a Llama in both presets) continues the prompt with the report.

The node features, the graph adjacency, the report bank and the prompt's token ids are
buffers, so ``state_dict`` carries everything export needs (the official code keeps the bank
outside the model). Stage-1 classification heads live in ``training/mammorg``: at inference
only the tokens above reach the LM, as in the paper.
"""
from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from models.mammorg.config import IMAGE_PLACEHOLDER, VIEWS, MammoRGConfig, config_from_dict
from models.mammorg.knowledge import (
    GRAPH_RELATIONS, GraphCrossAttention, KnowledgeGraph, ReportRetrieval, adjacency, graph_terms, projector,
)
from models.versamammo.student import VersaMammoStudent

IGNORE_INDEX = -100
FORMAT = "mammo-node/mammorg"



def view_tokens(vision: VersaMammoStudent, views: torch.Tensor, pool: int = 1) -> torch.Tensor:
    """(N, 3, S, S) preprocessed views -> (N, T, dim): the student's feature grid, average-pooled by
    ``pool`` (``MammoRGConfig.vision_pool``), read row by row. Training, export and the token cache
    all go through here, so they cut the same tokens."""
    grid = vision.feature_grid(views)
    if pool > 1:
        grid = torch.nn.functional.avg_pool2d(grid, pool)
    return grid.flatten(2).transpose(1, 2)

class MammoRG(nn.Module):
    """Frozen vision student + knowledge modules + projectors + causal LM (see the module docstring).

    Build with ``build_mammorg`` (new) or ``load_mammorg`` (saved). ``vision`` may be None when
    the caller always passes precomputed tokens (training caches them: the student is frozen).
    """

    def __init__(self, cfg: MammoRGConfig, lm: nn.Module, vision: VersaMammoStudent | None,
                 prompt_ids: tuple[Sequence[int], Sequence[int]], eos_id: int, pad_id: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.lm = lm
        self.vision = vision
        if vision is not None:
            vision.requires_grad_(False)
        dim, hidden = cfg.vision_dim, cfg.embed_dim
        nodes = cfg.graph_nodes or len(graph_terms())
        self.register_buffer("node_features", torch.zeros(nodes, hidden))
        self.register_buffer("adjacency", adjacency(graph_terms()) if nodes == len(graph_terms())
                             else torch.zeros(len(GRAPH_RELATIONS), nodes, nodes))
        self.register_buffer("bank", torch.zeros(cfg.bank_size, hidden))
        self.register_buffer("prompt_prefix_ids", torch.tensor(list(prompt_ids[0]), dtype=torch.long))
        self.register_buffer("prompt_suffix_ids", torch.tensor(list(prompt_ids[1]), dtype=torch.long))
        self.eos_id, self.pad_id = int(eos_id), int(pad_id)
        self.missing_view = nn.Parameter(torch.randn(cfg.tokens_per_view, dim) * 0.02)
        self.graph = KnowledgeGraph(hidden, dim, len(GRAPH_RELATIONS), cfg.graph_layers)
        self.cross = GraphCrossAttention(dim, cfg.cross_heads)
        self.retrieval = ReportRetrieval(dim, len(VIEWS), hidden, cfg.retrieval_temperature)
        self.image_projector = projector(dim, hidden)
        self.graph_projector = projector(dim, hidden)
        self.report_projector = projector(dim, hidden)

    # ------------------------------------------------------------------------ visual side
    @torch.no_grad()
    def encode_views(self, views: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B, 4, 3, S, S) preprocessed views (R-CC, R-MLO, L-CC, L-MLO) -> (B, 4, T, dim) raw tokens.

        Only present views go through the student; missing ones get zeros here and the learned
        missing-view embedding in ``tokens``.
        """
        if self.vision is None:
            raise RuntimeError("this MammoRG has no vision encoder attached; pass precomputed tokens")
        b, v = views.shape[:2]
        out = torch.zeros(b, v, self.cfg.tokens_per_view, self.cfg.vision_dim, device=views.device)
        mask = present.bool()
        if mask.any():
            self.vision.eval()
            out[mask] = view_tokens(self.vision, views[mask], self.cfg.vision_pool).to(out.dtype)
        return out

    def tokens(self, raw: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Raw tokens with the learned missing-view embedding in place of absent views."""
        # No shortcut when nothing is missing: a data-dependent branch would be frozen into the
        # exported graph by tracing (and drop its ``present`` input).
        missing = ~present.bool()
        fill = self.missing_view.to(raw.dtype).expand_as(raw)
        return torch.where(missing[:, :, None, None], fill, raw)

    def encoded_nodes(self) -> torch.Tensor:
        """(nodes, dim): the RGCN output. It depends on no input, so export bakes it in as a constant."""
        return self.graph(self.node_features, self.adjacency)

    def knowledge(self, tokens: torch.Tensor, nodes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 4, T, dim) -> graph tokens (B, 4, dim) and the report token (B, dim).

        ``nodes``: precomputed ``encoded_nodes()`` (export); computed here when None (training).
        """
        b, v, t, d = tokens.shape
        if nodes is None:
            nodes = self.graph(self.node_features.to(tokens.dtype), self.adjacency.to(tokens.dtype))
        nodes = nodes.to(tokens.dtype)
        graph_tokens = self.cross(tokens.reshape(b * v, t, d), nodes).view(b, v, d)
        report_token = self.retrieval(tokens, self.bank.to(tokens.dtype))
        return graph_tokens, report_token

    def prefix(self, raw: torch.Tensor, present: torch.Tensor, nodes: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 4, T, dim) raw tokens -> (B, P, hidden) soft-token prefix in the fixed view order."""
        tokens = self.tokens(raw, present)
        image = self.image_projector(tokens)                                  # (B, 4, T, H)
        if not self.cfg.knowledge:
            return image.flatten(1, 2)
        graph_tokens, report_token = self.knowledge(tokens, nodes)
        graph = self.graph_projector(graph_tokens).unsqueeze(2)              # (B, 4, 1, H)
        report = self.report_projector(report_token).unsqueeze(1)            # (B, 1, H)
        return torch.cat([torch.cat([graph, image], dim=2).flatten(1, 2), report], dim=1)

    # ------------------------------------------------------------------------ language side
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def prompt_embeddings(self, prefix: torch.Tensor) -> torch.Tensor:
        """[prompt before <image>] + soft prefix + [prompt after <image>], (B, L0, H)."""
        b = prefix.shape[0]
        before = self.embed(self.prompt_prefix_ids).unsqueeze(0).expand(b, -1, -1)
        after = self.embed(self.prompt_suffix_ids).unsqueeze(0).expand(b, -1, -1)
        return torch.cat([before.to(prefix.dtype), prefix, after.to(prefix.dtype)], dim=1)

    def forward(self, raw: torch.Tensor, present: torch.Tensor, target_ids: torch.Tensor,
                target_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher-forced loss on the report tokens only (prompt and soft tokens are IGNORE).

        ``target_ids`` (B, L) are right-padded report ids ending in EOS; ``target_mask`` marks real ones.
        """
        context = self.prompt_embeddings(self.prefix(raw, present))
        inputs = torch.cat([context, self.embed(target_ids).to(context.dtype)], dim=1)
        ignore = torch.full(context.shape[:2], IGNORE_INDEX, dtype=torch.long, device=inputs.device)
        labels = torch.cat([ignore, target_ids.masked_fill(~target_mask.bool(), IGNORE_INDEX)], dim=1)
        attention = torch.cat([torch.ones(context.shape[:2], dtype=torch.long, device=inputs.device),
                               target_mask.long()], dim=1)
        out = self.lm(inputs_embeds=inputs, attention_mask=attention, labels=labels, use_cache=False)
        return {"loss": out.loss, "logits": out.logits}

    @torch.no_grad()
    def generate(self, raw: torch.Tensor, present: torch.Tensor, max_new_tokens: int | None = None,
                 num_beams: int | None = None) -> list[list[int]]:
        """Report token ids per study (EOS and padding stripped); greedy, or beam search.

        Every study's context has the same length (fixed prompt, fixed prefix), so a batch needs
        no padding and the batched result equals the one-by-one result.
        """
        context = self.prompt_embeddings(self.prefix(raw, present))
        attention = torch.ones(context.shape[:2], dtype=torch.long, device=context.device)
        out = self.lm.generate(
            inputs_embeds=context, attention_mask=attention, do_sample=False,
            max_new_tokens=max_new_tokens or self.cfg.max_new_tokens, num_beams=num_beams or self.cfg.num_beams,
            eos_token_id=self.eos_id, pad_token_id=self.pad_id,
        )
        result = []
        for row in out.tolist():
            ids = []
            for token in row:
                if token == self.eos_id:
                    break
                ids.append(token)
            result.append(ids)
        return result

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything except the frozen student (saved per stage; the student is saved once)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("vision.")}


# ---------------------------------------------------------------------------- construction
def split_prompt(prompt: str) -> tuple[str, str]:
    before, after = prompt.split(IMAGE_PLACEHOLDER)
    return before, after


def build_lm(cfg: MammoRGConfig, vocab_size: int, weights: bool = True) -> nn.Module:
    """The causal LM: from ``cfg.lm_path`` (a local directory, never downloaded) or built from ``cfg.lm``.

    ``cfg.lm_dtype`` ("bfloat16" at full size) is the dtype the weights are loaded in.
    ``weights=False`` builds the ``lm_path`` architecture from its ``config.json`` alone (random
    init; under ``torch.device("meta")`` no memory at all: the full-size test does this).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, cfg.lm_dtype) if cfg.lm_dtype else None
    if cfg.lm_path is not None:
        path = Path(cfg.lm_path)
        if not path.is_dir():
            raise FileNotFoundError(f"language model directory {path} does not exist (weights are never downloaded)")
        if weights:
            lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        else:
            lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path, local_files_only=True), dtype=dtype)
    else:
        lm = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **cfg.lm))
    if lm.get_input_embeddings().num_embeddings != vocab_size:
        # new rows are set by training.mammorg.terms.init_term_rows (official: mean + 0.01 N(0, 1))
        lm.resize_token_embeddings(vocab_size, mean_resizing=False)
    return lm


def prompt_ids(tokenizer: Any, prompt: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt around ``<image>``: BOS + text before, and the text after."""
    before, after = split_prompt(prompt)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return (bos + tokenizer(before, add_special_tokens=False)["input_ids"],
            tokenizer(after, add_special_tokens=False)["input_ids"])


def build_mammorg(cfg: MammoRGConfig, tokenizer: Any, vision: VersaMammoStudent | None,
                  lm_weights: bool = True) -> MammoRG:
    """A new model for ``tokenizer`` (its vocabulary sizes the LM); buffers still empty.
    ``lm_weights=False``: the LM from its config alone (``build_lm``)."""
    from dataclasses import replace

    lm = build_lm(cfg, len(tokenizer), weights=lm_weights)
    hidden = int(lm.get_input_embeddings().embedding_dim)
    cfg = replace(cfg, vocab_size=len(tokenizer), embed_dim=hidden, graph_nodes=len(graph_terms()))
    if vision is not None and (vision.cfg.student_dim != cfg.vision_dim):
        raise ValueError(f"vision student has {vision.cfg.student_dim} channels, config says {cfg.vision_dim}")
    return MammoRG(cfg, lm, vision, prompt_ids(tokenizer, cfg.prompt), tokenizer.eos_token_id,
                   tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def set_bank(model: MammoRG, bank: torch.Tensor) -> None:
    """Install the report bank (K, hidden) and record its size in the config."""
    from dataclasses import replace

    if bank.ndim != 2 or bank.shape[1] != model.cfg.embed_dim:
        raise ValueError(f"bank must be (K, {model.cfg.embed_dim}), got {tuple(bank.shape)}")
    model.bank = bank.detach().to(model.bank.device, torch.float32).clone()
    model.cfg = replace(model.cfg, bank_size=int(bank.shape[0]))


# ---------------------------------------------------------------------------- save / load
def save_mammorg(model: MammoRG, directory: str | PathLike[str], tokenizer: Any,
                 extra: dict[str, Any] | None = None) -> Path:
    """``directory/``: ``mammorg.json`` (format, config, extra), ``model.pt`` (all weights and
    buffers: student, knowledge, projectors, LM) and ``tokenizer/``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "model.pt")
    tokenizer.save_pretrained(out / "tokenizer")
    meta = {"format": FORMAT, "config": model.cfg.to_dict(), "eos_id": model.eos_id, "pad_id": model.pad_id,
            "lm_config": model.lm.config.to_dict(),
            "vision": None if model.vision is None else _vision_config(model.vision), "extra": extra or {}}
    (out / "mammorg.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def _vision_config(vision: VersaMammoStudent) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(vision.cfg)


def read_meta(directory: str | PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / "mammorg.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory}: no mammorg.json (not a saved MammoRG model)") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_tokenizer(directory: str | PathLike[str]) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(Path(directory), local_files_only=True)


def load_mammorg(directory: str | PathLike[str]) -> tuple[MammoRG, Any]:
    """(model in eval mode, tokenizer) from ``save_mammorg`` output; weights loaded strictly."""
    from models.versamammo.config import config_from_dict as vision_config_from_dict
    from models.versamammo.student import build_student

    directory = Path(directory)
    meta = read_meta(directory)
    cfg = config_from_dict(meta["config"])
    tokenizer = load_tokenizer(directory / "tokenizer")
    vision = build_student(vision_config_from_dict(meta["vision"])) if meta.get("vision") else None
    from transformers import AutoConfig, AutoModelForCausalLM

    # The LM is rebuilt from its saved config (a model fine-tuned from lm_path is saved whole, so
    # the original directory is not needed any more), then every weight comes from model.pt.
    lm_config = dict(meta["lm_config"])
    dtype = getattr(torch, cfg.lm_dtype) if cfg.lm_dtype else None   # bf16 at full size stays bf16
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(lm_config.pop("model_type"), **lm_config), dtype=dtype)
    model = MammoRG(cfg, lm, vision, prompt_ids(tokenizer, cfg.prompt), meta["eos_id"], meta["pad_id"])
    state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval(), tokenizer
