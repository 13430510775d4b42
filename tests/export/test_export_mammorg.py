"""MammoRG export: prefix and KV-cache decoder reproduce torch; greedy decoding is token-identical."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from export.golden import phantom_views
from models.versamammo.config import student_preprocess_config
from node.inference.mammorg import GenerationSettings, MammoRGRunner
from node.inference.session import SessionSettings
from models.package.manifest import check_files, read_manifest
from tests.packages import build_mammorg_package, tiny_mammorg

CPU = SessionSettings(providers=("cpu",))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, tokenizer = tiny_mammorg(0)
    package = build_mammorg_package(tmp_path_factory.mktemp("rg") / "pkg")
    runner = MammoRGRunner(package, read_manifest(package), CPU)
    views, present = phantom_views(student_preprocess_config(model.vision.cfg), 3, seed=555)
    present[0, 1] = False   # a second missing-view pattern beside the golden one
    views[0, 1] = 0
    return model, tokenizer, runner, views, present


def _torch_ids(model, views, present, **kw):
    v, p = torch.from_numpy(views), torch.from_numpy(present)
    return model.generate(model.encode_views(v, p), p, **kw)


def test_greedy_generation_is_token_identical_to_torch_and_batch_independent(exported):
    model, tokenizer, runner, views, present = exported
    expected = _torch_ids(model, views, present, num_beams=1)
    assert runner.generate_ids(views, present) == expected
    assert [runner.generate_ids(views[i:i + 1], present[i:i + 1])[0] for i in range(3)] == expected
    assert any(len(row) > 3 for row in expected)  # the test decodes more than a token or two
    reports = runner.generate(views, present)
    assert [r.text for r in reports] == [tokenizer.decode(row, skip_special_tokens=True) for row in expected]


def test_prefix_graph_matches_torch_with_missing_views(exported):
    model, _, runner, views, present = exported
    v, p = torch.from_numpy(views), torch.from_numpy(present)
    with torch.no_grad():
        ref = model.prompt_embeddings(model.prefix(model.encode_views(v, p), p)).numpy()
    assert np.allclose(runner.context(views, present), ref, rtol=1e-3, atol=1e-3)
    assert ref.shape[1] == len(model.prompt_prefix_ids) + model.cfg.prefix_tokens + len(model.prompt_suffix_ids)


def test_cached_decoding_equals_full_recompute(exported):
    """Prefill then one-token steps through the cache give the logits of a full forward pass."""
    model, _, runner, views, present = exported
    context = runner.context(views[:2], present[:2])
    dec = runner.decoder
    tokens = np.array([[5, 9, 14], [7, 7, 3]])
    logits, cache = dec.step(context, context.shape[1], np.arange(2), dec.empty_cache(2))
    steps = [logits]
    for j in range(tokens.shape[1]):
        total = context.shape[1] + j + 1
        logits, cache = dec.step(runner._embed(tokens[:, j]), total, np.arange(2), cache)
        steps.append(logits)
    full = torch.cat([torch.from_numpy(context), model.embed(torch.from_numpy(tokens))], dim=1)
    with torch.no_grad():
        ref = model.lm(inputs_embeds=full).logits[:, context.shape[1] - 1:].numpy()
    assert np.allclose(np.stack(steps, 1), ref, rtol=1e-3, atol=1e-3)


def _sequence_score(model, views, present, ids, length_penalty=1.0):
    """Sum of log-probabilities of ``ids`` + EOS under the torch model, over length ** penalty."""
    v, p = torch.from_numpy(views), torch.from_numpy(present)
    with torch.no_grad():
        context = model.prompt_embeddings(model.prefix(model.encode_views(v, p), p))
        seq = torch.tensor([ids + [model.eos_id]])
        full = torch.cat([context, model.embed(seq)], dim=1)
        logp = model.lm(inputs_embeds=full).logits[0, context.shape[1] - 1:-1].log_softmax(-1)
    total = float(logp.gather(1, seq.T).sum())
    return total / (len(ids) + 1) ** length_penalty


def test_beam_search_one_beam_is_greedy_and_more_beams_score_at_least_as_well(exported):
    model, _, runner, views, present = exported
    greedy = runner.generate_ids(views, present)
    assert runner.generate_ids(views, present, GenerationSettings(max_new_tokens=12, num_beams=1)) == greedy
    beam = runner.generate_ids(views, present, GenerationSettings(max_new_tokens=12, num_beams=3))
    for i in range(len(views)):
        # Finished hypotheses are compared by score; a greedy run cut at max_new_tokens has no EOS.
        if len(greedy[i]) < 12 and len(beam[i]) < 12:
            assert _sequence_score(model, views[i:i + 1], present[i:i + 1], beam[i]) >= \
                _sequence_score(model, views[i:i + 1], present[i:i + 1], greedy[i]) - 1e-4
    # batched beam search equals one study at a time
    assert [runner.generate_ids(views[i:i + 1], present[i:i + 1], GenerationSettings(12, 3))[0]
            for i in range(len(views))] == beam


def test_package_lists_graphs_tokenizer_and_generation(exported, tmp_path):
    model, _, runner, _, _ = exported
    manifest = runner.manifest
    assert set(manifest.graphs) == {"prefix", "decoder"}
    assert {"tokenizer/tokenizer.json", "embed_tokens.npy", "golden/mammorg.npz"} <= set(manifest.files)
    assert manifest.data["generation"]["eos_id"] == model.eos_id
    assert manifest.data["decoder"]["layers"] == 2 and manifest.data["decoder"]["kv_heads"] == 2
    assert check_files(runner.root, manifest) == []
    names = [i["name"] for i in manifest.graphs["decoder"]["inputs"]]
    assert names[:3] == ["inputs_embeds", "attention_mask", "cache_index"] and "past.1.value" in names


def test_large_graphs_are_written_with_external_data(tmp_path):
    from export.onnx_io import export_graph

    layer = torch.nn.Linear(64, 64)
    path = export_graph(layer, (torch.randn(2, 64),), tmp_path / "big.onnx", ["x"], ["y"], {"x": {0: "n"}},
                        external_threshold=1000)
    assert (tmp_path / "big.onnx.data").stat().st_size >= 64 * 64 * 4
    import onnxruntime as ort

    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": np.ones((3, 64), np.float32)})[0]
    with torch.no_grad():
        assert np.allclose(out, layer(torch.ones(3, 64)).numpy(), atol=1e-5)


def test_the_manifest_carries_the_encoders_preprocessing_both_ways(exported, tmp_path):
    """Issue 20: a model trained on the official MammoRG geometry (shortest side, centre crop,
    0.5/0.5) ships it in its manifest, golden vectors made that way; ours ships the student's."""
    from models.mammorg.model import load_mammorg, save_mammorg
    from models.mammorg.config import preprocess_config
    from models.preprocess import PreprocessConfig, official_mammorg_config

    model, ours = exported[0], exported[2].preprocessing
    assert ours == student_preprocess_config(model.vision.cfg).to_dict() and ours["resize"] == "squash"
    side = model.vision.cfg.student_input
    official = official_mammorg_config(side).to_dict()
    package = build_mammorg_package(tmp_path / "official", preprocessing=official)
    manifest = read_manifest(package)
    pre = PreprocessConfig.from_dict(manifest.data["preprocessing"])
    assert (pre.resize, pre.mean, pre.std, pre.size) == ("crop", (0.5,), (0.5,), (side, side))
    assert check_files(package, manifest) == []
    # the golden views were made with the crop geometry, and the runner reproduces them
    golden = np.load(package / manifest.data["golden"]["file"])
    views, present = phantom_views(pre, 2)
    np.testing.assert_array_equal(golden["views"], views)
    assert not np.array_equal(views, phantom_views(PreprocessConfig.from_dict(ours), 2)[0])
    assert MammoRGRunner(package, manifest, CPU, warm_up=False).preprocessing == manifest.data["preprocessing"]
    # the setting survives save/load, and a size that is not the student's input is refused
    crop_model, tokenizer = tiny_mammorg(0, preprocessing=official)
    save_mammorg(crop_model, tmp_path / "saved", tokenizer)
    loaded, _ = load_mammorg(tmp_path / "saved")
    assert preprocess_config(loaded.cfg, loaded.vision.cfg) == pre
    with pytest.raises(ValueError, match="does not match"):
        preprocess_config(replace(loaded.cfg, preprocessing=official_mammorg_config(side + 8).to_dict()),
                          loaded.vision.cfg)


def test_a_pooled_grid_gives_averaged_tokens_in_torch_and_in_the_exported_graph(tmp_path):
    """MammoRGConfig.vision_pool: each view's tokens are the student's feature grid averaged over
    pool x pool cells (4 x 4 tokens from the tiny student's 8 x 8 grid), in torch and in the
    exported prefix graph alike, and the prefix is that much shorter."""
    from export.mammorg import export_mammorg
    from export.package import finish_package
    from models.mammorg.config import preprocess_config

    model, tokenizer = tiny_mammorg(0, vision_pool=2)
    views, present = phantom_views(preprocess_config(model.cfg, model.vision.cfg), 2)
    v, p = torch.from_numpy(views), torch.from_numpy(present)
    with torch.no_grad():
        raw = model.encode_views(v, p)
        grid = model.vision.feature_grid(v[0, :1])                        # (1, D, 8, 8)
    assert raw.shape[2] == 16 and model.cfg.prefix_tokens == 4 * (16 + 1) + 1
    cell = grid[0, :, 2:4, 4:6].mean((1, 2))                              # pooled cell (1, 2) = token 6
    assert torch.allclose(raw[0, 0, 6], cell, atol=1e-5)
    fields = export_mammorg(model, tokenizer, tmp_path / "pkg", views, present)
    package, _ = finish_package(tmp_path / "pkg", "mammorg-pooled", "1.0.0", fields, training={"note": "random"})
    runner = MammoRGRunner(package, read_manifest(package), CPU)
    with torch.no_grad():
        ref = model.prompt_embeddings(model.prefix(raw, p)).numpy()
    assert np.allclose(runner.context(views, present), ref, rtol=1e-3, atol=1e-3)
    assert runner.generate_ids(views, present) == _torch_ids(model, views, present, num_beams=1)
