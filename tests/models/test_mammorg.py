"""MammoRG model: prefix layout, missing views, knowledge graph, term tokens, generation, save/load."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.report import lexicon
from models.mammorg.model import build_mammorg, load_mammorg, save_mammorg, set_bank
from models.mammorg.config import VIEWS, MammoRGConfig, config_for, config_from_dict
from models.mammorg.edges import atlas_edges, complete_edges, edge_allowed
from models.mammorg.knowledge import GRAPH_RELATIONS, adjacency, graph_terms
from training.mammorg.terms import init_term_rows, mask_base_rows
from training.mammorg.tokenizer import train_bpe, with_terms

REPORTS = [
    "FINDINGS:\nThe breasts are heterogeneously dense. In the left breast, upper outer quadrant, there is an "
    "irregular mass with spiculated margins.\n\nIMPRESSION:\nRight breast: BI-RADS 1 - negative.\n"
    "Left breast: BI-RADS 5 - highly suggestive of malignancy.",
    "FINDINGS:\nThere are scattered areas of fibroglandular density. No suspicious masses or calcifications.\n\n"
    "IMPRESSION:\nRight breast: BI-RADS 1 - negative.\nLeft breast: BI-RADS 1 - negative.",
    "FINDINGS:\nThe breasts are extremely dense. Grouped punctate calcifications in the right breast.\n\n"
    "IMPRESSION:\nRight breast: BI-RADS 3 - probably benign.\nLeft breast: BI-RADS 1 - negative.",
]


@pytest.fixture(scope="module")
def tokenizers():
    base = train_bpe(REPORTS * 3, 400)
    full, base_rows = with_terms(base, "en")
    return base, full, base_rows


def _cfg(**kw) -> MammoRGConfig:
    small_lm = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": False}
    return replace(config_for("tiny"), vision_dim=16, vision_grid=2, cross_heads=2, graph_layers=1, lm=small_lm,
                   max_new_tokens=12, **kw)


def _model(tokenizers, **kw):
    base, full, base_rows = tokenizers
    torch.manual_seed(0)
    model = build_mammorg(replace(_cfg(**kw), base_vocab_size=base_rows), full, None)
    set_bank(model, torch.randn(5, model.cfg.embed_dim))
    model.node_features.normal_()
    return model.eval()


def _tokens(b: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 4, 16, generator=g), torch.ones(b, 4, dtype=torch.bool)


def test_full_preset_prefix_is_1029_soft_tokens():
    cfg = config_for("full", lm_path="/nonexistent")
    assert (cfg.vision_dim, cfg.vision_grid, cfg.tokens_per_view) == (2048, 16, 256)
    assert cfg.prefix_tokens == 1029
    assert replace(cfg, knowledge=False).prefix_tokens == 1024


def test_config_rejects_prompt_without_one_image_placeholder():
    with pytest.raises(ValueError, match="<image>"):
        replace(config_for("tiny"), prompt="no placeholder")
    with pytest.raises(ValueError, match="unknown MammoRG config keys"):
        config_from_dict({**config_for("tiny").to_dict(), "bogus": 1})


def test_graph_has_the_70_terms_and_only_graph_schema_relations():
    nodes = graph_terms()
    assert len(nodes) == 70
    adj = adjacency(nodes)
    assert adj.shape == (len(GRAPH_RELATIONS), 70, 70)
    r = len(lexicon.RELATIONS)
    for k, relation in enumerate(lexicon.RELATIONS):
        heads, tails = torch.nonzero(adj[k], as_tuple=True)
        assert len(heads) > 0
        for i, j in zip(heads.tolist(), tails.tolist()):
            assert edge_allowed(nodes[i], relation, nodes[j])
            assert adj[k + r, j, i] > 0  # the inverse relation carries the message back
    rows = adj.sum(-1)
    assert torch.all((rows == 0) | torch.isclose(rows, torch.ones_like(rows)))


def test_default_graph_is_the_atlas_table_not_the_complete_schema():
    nodes = graph_terms()
    k = lexicon.RELATIONS.index("located_at")
    atlas, complete = adjacency(nodes) > 0, adjacency(nodes, complete_edges()) > 0
    assert int(complete[k].sum()) == 180 and int(atlas[k].sum()) < 180
    i = nodes.index
    assert atlas[k, i("skin_thickening"), i("skin")] and not atlas[k, i("skin_thickening"), i("uoq")]
    assert complete[k, i("skin_thickening"), i("uoq")]
    with pytest.raises(ValueError, match="unknown relation"):
        adjacency(nodes, [("mass", "next_to", "uoq")])


def test_graph_token_depends_on_the_edges(tokenizers):
    """The same image tokens and node features give other graph tokens under another edge set,
    and dropping a single edge changes the tokens of the views (the graph is not decoration)."""
    model = _model(tokenizers)
    raw, present = _tokens()
    nodes = graph_terms()

    def graph_tokens(edges) -> torch.Tensor:
        model.adjacency.copy_(adjacency(nodes, edges))
        return model.knowledge(model.tokens(raw, present))[0]

    atlas = atlas_edges()
    with_atlas, with_complete, with_none = graph_tokens(atlas), graph_tokens(complete_edges()), graph_tokens([])
    one_less = graph_tokens([e for e in atlas if e[:3] != ("mass", "modified_by", "margin_spiculated")])
    for other in (with_complete, with_none, one_less):
        assert (other - with_atlas).abs().max() > 1e-4
    torch.testing.assert_close(graph_tokens(atlas), with_atlas)  # deterministic: only the edges changed


def test_prefix_layout_is_view_blocks_then_report_token(tokenizers):
    model = _model(tokenizers)
    raw, present = _tokens()
    prefix = model.prefix(raw, present)
    t = model.cfg.tokens_per_view
    assert prefix.shape == (2, 4 * (1 + t) + 1, model.cfg.embed_dim)
    # Changing only L-CC's raw tokens changes L-CC's image tokens and every knowledge token
    # (graph tokens of L-CC, the report token) but no other view's image tokens.
    changed = raw.clone()
    changed[:, VIEWS.index("L-CC")] += 1.0
    other = model.prefix(changed, present)
    diff = (other - prefix).abs().amax(dim=(0, 2)) > 1e-6
    block = 1 + t
    lcc = VIEWS.index("L-CC")
    for v in range(4):
        image_positions = slice(v * block + 1, (v + 1) * block)
        assert bool(diff[image_positions].all()) == (v == lcc)
    assert bool(diff[lcc * block])          # L-CC's graph token
    assert bool(diff[-1])                   # the report token sees all four views


def test_ablation_without_knowledge_has_image_tokens_only(tokenizers):
    model = _model(tokenizers, knowledge=False)
    raw, present = _tokens()
    assert model.prefix(raw, present).shape[1] == 4 * model.cfg.tokens_per_view


def test_missing_view_uses_the_learned_embedding(tokenizers):
    model = _model(tokenizers)
    raw, present = _tokens()
    present[0, VIEWS.index("R-MLO")] = False
    garbage = raw.clone()
    garbage[0, VIEWS.index("R-MLO")] = 1e3
    assert torch.allclose(model.prefix(raw, present), model.prefix(garbage, present))
    torch.testing.assert_close(model.tokens(raw, present)[0, 1], model.missing_view)


def test_bank_buffers_and_prompt_travel_in_the_state_dict(tokenizers):
    model = _model(tokenizers)
    state = model.state_dict()
    for key in ("bank", "node_features", "adjacency", "prompt_prefix_ids", "prompt_suffix_ids"):
        assert key in state
    assert state["bank"].shape == (5, model.cfg.embed_dim)
    assert model.cfg.bank_size == 5


def test_retrieval_depends_on_the_bank(tokenizers):
    model = _model(tokenizers)
    raw, present = _tokens()
    _, report = model.knowledge(model.tokens(raw, present))
    model.bank.mul_(-1.0)
    _, flipped = model.knowledge(model.tokens(raw, present))
    assert not torch.allclose(report, flipped)


def test_loss_is_on_report_tokens_only(tokenizers):
    model = _model(tokenizers)
    raw, present = _tokens()
    ids = torch.tensor([[5, 6, 7, model.eos_id], [8, 9, model.eos_id, model.pad_id]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    out = model(raw, present, ids, mask)
    assert torch.isfinite(out["loss"])
    # Padding content does not matter.
    ids2 = ids.clone()
    ids2[1, 3] = 42
    assert torch.allclose(model(raw, present, ids2, mask)["loss"], out["loss"])


def test_generation_batched_equals_one_by_one_and_beam_runs(tokenizers):
    model = _model(tokenizers)
    raw, present = _tokens(3)
    batched = model.generate(raw, present, max_new_tokens=8)
    single = [model.generate(raw[i:i + 1], present[i:i + 1], max_new_tokens=8)[0] for i in range(3)]
    assert batched == single
    assert all(len(ids) <= 8 and model.eos_id not in ids for ids in batched)
    beams = model.generate(raw, present, max_new_tokens=8, num_beams=3)
    assert len(beams) == 3


def test_save_load_round_trip_is_exact(tokenizers, tmp_path):
    model = _model(tokenizers)
    _, full, _ = tokenizers
    raw, present = _tokens()
    ids = torch.tensor([[5, 6, model.eos_id]])
    before = model(raw[:1], present[:1], ids, torch.ones_like(ids, dtype=torch.bool))["logits"]
    save_mammorg(model, tmp_path / "m", full, extra={"note": "test"})
    loaded, tok = load_mammorg(tmp_path / "m")
    after = loaded(raw[:1], present[:1], ids, torch.ones_like(ids, dtype=torch.bool))["logits"]
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert loaded.cfg == model.cfg
    assert len(tok) == len(full)
    assert loaded.generate(raw, present, max_new_tokens=6) == model.generate(raw, present, max_new_tokens=6)


def test_lm_path_that_does_not_exist_fails_clearly(tokenizers):
    _, full, _ = tokenizers
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_mammorg(config_for("full", lm_path="/nonexistent/vicuna"), full, None)


def test_terms_are_atomic_tokens_and_text_round_trips(tokenizers):
    _, full, base_rows = tokenizers
    text = REPORTS[0]
    ids = full(text, add_special_tokens=False)["input_ids"]
    pieces = full.convert_ids_to_tokens(ids)
    assert "BI-RADS 5" in pieces and "heterogeneously dense" in pieces and "upper outer quadrant" in pieces
    assert all(full.convert_tokens_to_ids(t) >= base_rows for t in ("BI-RADS 5", "heterogeneously dense"))
    assert full.decode(ids) == text
    assert "BI-RADS 4A" in full.get_vocab() and "BI-RADS 4" not in full.get_vocab()


def test_term_rows_start_at_mean_plus_noise_and_only_they_learn(tokenizers):
    model = _model(tokenizers)
    base_rows = model.cfg.base_vocab_size
    lm = model.lm
    init_term_rows(lm, base_rows, seed=0)
    emb = lm.get_input_embeddings().weight
    mean = emb[:base_rows].mean(0)
    assert (emb[base_rows:] - mean).abs().max() < 0.06
    assert (emb[base_rows:] - mean).std() > 1e-3
    mask_base_rows(lm, base_rows)
    raw, present = _tokens()
    ids = torch.tensor([[base_rows + 1, 3, model.eos_id]])
    model(raw[:1], present[:1], ids, torch.ones_like(ids, dtype=torch.bool))["loss"].backward()
    for weight in (emb, lm.get_output_embeddings().weight):
        assert weight.grad[:base_rows].abs().max() == 0
        assert weight.grad[base_rows:].abs().max() > 0
