"""MammoRG's knowledge modules: the lexicon graph, its relational GCN, the per-view graph token
and the report-retrieval token.

The graph's nodes are the lexicon's MammoRG terms (70); its edges (located_at, suggestive_of,
modified_by) come from clinical knowledge and the training reports (``models.mammorg.edges``:
a curated BI-RADS-atlas table plus co-occurrence statistics), plus the three inverse relations
so that information flows both ways. Node features come from
the language model's own input embeddings of each term's text (the paper uses bert-base-chinese;
see docs/mammorg.md). The RGCN output does not depend on the image, so it is computed once per
forward pass and can be folded into a constant at export.

Deviations from the official modules, on purpose: standard multi-head attention (the official
code splits heads with a ``view`` that mixes positions and channels), and a retrieval softmax
temperature of 0.05 on cosine similarity (the official 1/sqrt(2048) scaling makes the weights
nearly uniform, so the "retrieved" report is the bank's mean whatever the image).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.report import lexicon
from models.mammorg.edges import atlas_edges

GRAPH_RELATIONS: tuple[str, ...] = lexicon.RELATIONS + tuple(f"{r}_inverse" for r in lexicon.RELATIONS)


def graph_terms() -> list[str]:
    """Node ids, in lexicon order: the MammoRG terms."""
    return [t.id for t in lexicon.terms() if t.mammorg]


def term_text(term_id: str) -> str:
    """The text whose embedding is the node feature: English name and preferred Chinese form."""
    term = lexicon.get(term_id)
    return f"{term.name} {term.zh[0]}" if term.zh else term.name


def adjacency(nodes: list[str], edges: Iterable[Sequence[str]] | None = None) -> torch.Tensor:
    """(2R, N, N) row-normalised adjacency, one slice per relation and inverse relation.

    ``edges``: (head, relation, tail[, source]) rows; None means the curated atlas table
    (``mammorg_edges.atlas_edges``), the graph a model has before its training reports are seen.
    Row normalisation makes each message a mean over the node's neighbours (RGCN's aggregation).
    """
    n, r = len(nodes), len(lexicon.RELATIONS)
    index = {node: i for i, node in enumerate(nodes)}
    adj = torch.zeros(2 * r, n, n)
    for head, relation, tail, *_ in (atlas_edges() if edges is None else edges):
        if relation not in lexicon.RELATIONS:
            raise ValueError(f"unknown relation {relation!r} in graph edge ({head}, {relation}, {tail})")
        if head in index and tail in index:
            k = lexicon.RELATIONS.index(relation)
            adj[k, index[head], index[tail]] = 1.0
            adj[k + r, index[tail], index[head]] = 1.0
    degree = adj.sum(-1, keepdim=True).clamp_min(1.0)
    return adj / degree


class RGCNLayer(nn.Module):
    """h' = GELU(W0 h + sum_r A_r h W_r), W_r = sum_b c_rb V_b (basis decomposition, Schlichtkrull
    et al.): six relation weights of 2048x2048 would be 100M parameters at full size."""

    def __init__(self, dim: int, relations: int, bases: int = 3) -> None:
        super().__init__()
        self.self_loop = nn.Linear(dim, dim)
        self.bases = nn.Parameter(torch.empty(bases, dim, dim))
        self.coefficients = nn.Parameter(torch.empty(relations, bases))
        nn.init.xavier_uniform_(self.bases.view(-1, dim))
        nn.init.normal_(self.coefficients, std=bases ** -0.5)

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        mixed = torch.einsum("rb,rij->bij", self.coefficients, adj)     # sum_r c_rb A_r, per basis
        messages = torch.bmm(torch.bmm(mixed, h.expand(mixed.shape[0], -1, -1)), self.bases).sum(0)
        return F.gelu(self.self_loop(h) + messages)


class KnowledgeGraph(nn.Module):
    """Input projection, residual pre-norm RGCN layers, output LayerNorm: (N, E) -> (N, dim)."""

    def __init__(self, in_dim: int, dim: int, relations: int, layers: int) -> None:
        super().__init__()
        self.input = nn.Linear(in_dim, dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.layers = nn.ModuleList(RGCNLayer(dim, relations) for _ in range(layers))
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, node_features: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h = self.input(node_features)
        for norm, layer in zip(self.norms, self.layers):
            h = h + layer(norm(h), adj)
        return self.out_norm(h)


class GraphCrossAttention(nn.Module):
    """Image tokens of one view attend over the graph nodes; the mean over tokens is the graph token."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """(M, T, dim) image tokens, (N, dim) nodes -> (M, dim) graph tokens."""
        kv = nodes.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        attended, _ = self.attention(tokens, kv, kv, need_weights=False)
        return self.norm(attended.mean(dim=1))


class ReportRetrieval(nn.Module):
    """Pooled four-view feature -> softmax over cosine similarity to the report bank -> report token.

    The bank (training-report embeddings, (B, E)) is a buffer of the owning model, so it is saved
    and exported with the weights; this module only holds the projections.
    """

    def __init__(self, vision_dim: int, views: int, embed_dim: int, temperature: float) -> None:
        super().__init__()
        self.query = nn.Linear(views * vision_dim, embed_dim)
        self.out = nn.Linear(embed_dim, vision_dim)
        self.norm = nn.LayerNorm(vision_dim)
        self.temperature = temperature

    def forward(self, tokens: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """(B, V, T, dim) tokens, (K, E) bank -> (B, dim) report token."""
        pooled = tokens.mean(dim=2).flatten(1)                   # channel concat of the views, mean over T
        query = F.normalize(self.query(pooled), dim=-1)
        keys = F.normalize(bank, dim=-1)
        weights = torch.softmax(query @ keys.T / self.temperature, dim=-1)
        return self.norm(self.out(weights @ bank))


def projector(in_dim: int, out_dim: int) -> nn.Sequential:
    """LLaVA's mlp2x_gelu: Linear, GELU, Linear."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
