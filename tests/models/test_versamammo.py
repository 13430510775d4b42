"""VersaMammo modules: official-checkpoint fidelity, shapes, masking, heads and our checkpoint format.

The official-student test compares against efficientnet_pytorch 0.7.1 (the implementation the
released weights were trained with) with every weight and BN statistic randomised, so a wrong
mapping or padding cannot hide behind zeros or identity BNs. The official-teacher checkpoints are
written from key names enumerated here, independently of the loader's mapping code.
"""
from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.versamammo.checkpoint import (
    DINOHead,
    OfficialCheckpointError,
    VersaMammoStudent,
    VersaMammoTeacher,
    build_student,
    build_teacher,
    config_for,
    config_from_dict,
    load_checkpoint,
    load_official_student,
    load_official_teacher,
    save_checkpoint,
)
from models.versamammo.padding import StaticSamePadConv2d, tf_same_pads

FULL = config_for("full")
TINY = config_for("tiny")
# Full teacher geometry rules (patch 14, 224 global crops, 4 block chunks over 12 blocks) at ViT-Tiny width.
TEACHER_TEST = replace(FULL, teacher_arch="vit_tiny_patch14", dino_prototypes=96, dino_hidden=64,
                       dino_bottleneck=32, ibot_prototypes=80, ibot_hidden=48, ibot_bottleneck=24)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP threads spinning against other test
    processes made this file ~8x slower (wall) than running single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------
# Official student
# ------------------------------------------------------------------------------------------

def _randomise_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter and buffer random, scaled so 39 blocks neither explode nor vanish."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                tensor.copy_(torch.randint(1, 1000, tensor.shape, generator=gen))
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            elif tensor.dim() == 1 and "_bn" in name and name.endswith("weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.5 + 0.75)
            elif tensor.dim() == 1:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) / math.sqrt(tensor[0].numel()))


@pytest.fixture(scope="module")
def official_student(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from efficientnet_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-b5").eval()
    _randomise_(reference, seed=1)
    state = {"module.image_encoder." + k: v.clone() for k, v in reference.state_dict().items()
             if not k.startswith("_fc.")}
    gen = torch.Generator().manual_seed(2)
    state["module.birads_head.weight"] = torch.randn(6, 2048, generator=gen)
    state["module.birads_head.bias"] = torch.randn(6, generator=gen)
    state["module.density_head.weight"] = torch.randn(4, 2048, generator=gen)
    state["module.density_head.bias"] = torch.randn(4, generator=gen)
    path = tmp_path_factory.mktemp("official") / "VersaMammo (Enb5).pth"
    torch.save(state, path)
    x = torch.randn(2, 3, 512, 512, generator=gen)
    with torch.no_grad():
        expected = torch.flatten(F.adaptive_avg_pool2d(reference.extract_features(x), 1), 1)
    return {"path": path, "state": state, "x": x, "expected": expected, "student": load_official_student(path)}


def test_official_student_matches_efficientnet_pytorch_at_512(official_student: dict) -> None:
    student: VersaMammoStudent = official_student["student"]
    assert not student.training
    with torch.no_grad():
        got = student.features(official_student["x"])
    expected = official_student["expected"]
    assert expected.abs().mean() > 0.05  # the randomisation left a signal worth comparing
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_official_student_needs_the_456_static_padding(official_student: dict) -> None:
    student: VersaMammoStudent = official_student["student"]
    assert student.static_pads["blocks.3.0.conv_dw"] == (1, 1, 1, 1)  # 57-pixel stage at 456
    assert student.static_pads["blocks.5.0.conv_dw"] == (2, 2, 2, 2)  # 29-pixel stage at 456
    dynamic = build_student(replace(FULL, student_pad_size=None)).eval()
    assert not any(isinstance(m, StaticSamePadConv2d) for m in dynamic.modules())
    dynamic.load_state_dict(student.state_dict())
    with torch.no_grad():
        got = dynamic.features(official_student["x"])
    assert (got - official_student["expected"]).abs().max() > 1e-4


def test_official_student_heads(official_student: dict) -> None:
    student: VersaMammoStudent = official_student["student"]
    state = official_student["state"]
    assert torch.equal(student.birads_head.weight, state["module.birads_head.weight"])
    assert torch.equal(student.density_head.bias, state["module.density_head.bias"])
    assert any("findings_head" in note for note in student.load_notes)
    assert not any(n.startswith(("birads_head", "density_head")) for n in student.load_notes)


def test_official_student_names_invert(official_student: dict) -> None:
    from models.versamammo.official import official_student_name

    backbone = official_student["student"].backbone
    names = {"module.image_encoder." + official_student_name(k, backbone) for k in backbone.state_dict()}
    assert names == {k for k in official_student["state"] if k.startswith("module.image_encoder.")}


def test_official_student_wrong_keys_are_named(official_student: dict, tmp_path: Path) -> None:
    state = dict(official_student["state"])
    del state["module.image_encoder._blocks.7._se_expand.bias"]
    state["module.image_encoder._blocks.3._bogus.weight"] = torch.zeros(1)
    state["module.birads_head.weight"] = torch.zeros(7, 2048)  # a 7-class head does not fit: stays random
    state["module.birads_head.bias"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(OfficialCheckpointError) as info:
        load_official_student(path)
    assert "module.image_encoder._blocks.3._bogus.weight" in str(info.value)  # as spelled in the file
    assert "module.image_encoder._blocks.7._se_expand.bias (blocks.1.4.se.conv_expand.bias)" in str(info.value)
    del state["module.image_encoder._blocks.3._bogus.weight"]
    state["module.image_encoder._blocks.7._se_expand.bias"] = official_student["state"][
        "module.image_encoder._blocks.7._se_expand.bias"]
    torch.save(state, path)
    student = load_official_student(path)
    assert any(n.startswith("birads_head") and "do not fit" in n for n in student.load_notes)


# ------------------------------------------------------------------------------------------
# Official teacher
# ------------------------------------------------------------------------------------------

def _official_teacher_state(cfg, chunks: int | None = 4, heads: bool = True, seed: int = 0) -> dict:
    """A random teacher state dict spelled the way DINOv2 saves it (ViT-Tiny width, 12 blocks)."""
    dim, depth, patch, grid = 192, 12, 14, 224 // 14
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.05

    state = {
        "backbone.cls_token": rnd(1, 1, dim),
        "backbone.pos_embed": rnd(1, 1 + grid * grid, dim),
        "backbone.mask_token": rnd(1, dim),
        "backbone.patch_embed.proj.weight": rnd(dim, 3, patch, patch),
        "backbone.patch_embed.proj.bias": rnd(dim),
        "backbone.norm.weight": 1 + rnd(dim),
        "backbone.norm.bias": rnd(dim),
    }
    for i in range(depth):
        prefix = f"backbone.blocks.{i // (depth // chunks)}.{i}." if chunks else f"backbone.blocks.{i}."
        for name, shape in [
            ("norm1.weight", (dim,)), ("norm1.bias", (dim,)),
            ("attn.qkv.weight", (3 * dim, dim)), ("attn.qkv.bias", (3 * dim,)),
            ("attn.proj.weight", (dim, dim)), ("attn.proj.bias", (dim,)), ("ls1.gamma", (dim,)),
            ("norm2.weight", (dim,)), ("norm2.bias", (dim,)),
            ("mlp.fc1.weight", (4 * dim, dim)), ("mlp.fc1.bias", (4 * dim,)),
            ("mlp.fc2.weight", (dim, 4 * dim)), ("mlp.fc2.bias", (dim,)), ("ls2.gamma", (dim,)),
        ]:
            state[prefix + name] = rnd(*shape) + (1 if name.startswith("norm") and name.endswith("weight") else 0)
    if heads:
        for head, protos, hidden, bottleneck in [
            ("dino_head", cfg.dino_prototypes, cfg.dino_hidden, cfg.dino_bottleneck),
            ("ibot_head", cfg.ibot_prototypes, cfg.ibot_hidden, cfg.ibot_bottleneck),
        ]:
            for index, (n_out, n_in) in zip((0, 2, 4), ((hidden, dim), (hidden, hidden), (bottleneck, hidden))):
                state[f"{head}.mlp.{index}.weight"] = rnd(n_out, n_in)
                state[f"{head}.mlp.{index}.bias"] = rnd(n_out)
            state[f"{head}.last_layer.weight_g"] = torch.ones(protos, 1)
            state[f"{head}.last_layer.weight_v"] = rnd(protos, bottleneck)
    return state


def test_official_teacher_tensors_land_in_place(tmp_path: Path) -> None:
    state = _official_teacher_state(TEACHER_TEST)
    torch.save({"teacher": state}, tmp_path / "teacher_checkpoint.pth")
    teacher = load_official_teacher(tmp_path / "teacher_checkpoint.pth", TEACHER_TEST)
    assert not teacher.training and teacher.load_notes == []
    bb = teacher.backbone
    assert torch.equal(bb.blocks[4].attn.qkv.weight, state["backbone.blocks.1.4.attn.qkv.weight"])
    assert torch.equal(bb.blocks[11].ls2.gamma, state["backbone.blocks.3.11.ls2.gamma"])
    assert torch.equal(bb.blocks[0].mlp.fc1.bias, state["backbone.blocks.0.0.mlp.fc1.bias"])
    assert torch.equal(bb.pos_embed, state["backbone.pos_embed"])
    assert torch.equal(bb.mask_token, state["backbone.mask_token"])
    assert torch.equal(bb.patch_embed.proj.weight, state["backbone.patch_embed.proj.weight"])
    assert torch.equal(bb.norm.bias, state["backbone.norm.bias"])
    assert torch.equal(teacher.dino_head.mlp[4].weight, state["dino_head.mlp.4.weight"])
    assert torch.equal(teacher.ibot_head.last_layer.weight_v, state["ibot_head.last_layer.weight_v"])
    with torch.no_grad():
        for side, n_patches in ((224, 256), (98, 49), (518, 37 * 37)):
            out = teacher(torch.randn(1, 3, side, side))
            assert out["cls"].shape == (1, 192) and out["patch"].shape == (1, n_patches, 192)
            assert out["dino"].shape == (1, TEACHER_TEST.dino_prototypes)
            assert torch.isfinite(out["patch"]).all()

    # Without block chunking and without heads: same backbone, heads noted as random.
    flat = _official_teacher_state(TEACHER_TEST, chunks=None, heads=False)
    torch.save({"teacher": flat}, tmp_path / "flat.pth")
    flat_teacher = load_official_teacher(tmp_path / "flat.pth", TEACHER_TEST)
    assert sorted(n.split(":")[0] for n in flat_teacher.load_notes) == ["dino_head", "ibot_head"]
    x = torch.randn(1, 3, 98, 98)
    with torch.no_grad():
        assert torch.equal(teacher.backbone(x)["cls"], flat_teacher.backbone(x)["cls"])


def test_official_teacher_wrong_key_is_named(tmp_path: Path) -> None:
    state = _official_teacher_state(TEACHER_TEST)
    state["backbone.blocks.2.7.attn.qkv_typo.weight"] = state.pop("backbone.blocks.2.7.attn.qkv.weight")
    torch.save({"teacher": state}, tmp_path / "bad.pth")
    with pytest.raises(OfficialCheckpointError) as info:
        load_official_teacher(tmp_path / "bad.pth", TEACHER_TEST)
    message = str(info.value)
    assert "backbone.blocks.2.7.attn.qkv_typo.weight" in message  # unexpected, as spelled in the file
    assert "backbone.blocks.7.attn.qkv.weight" in message  # missing, as the model names it


# ------------------------------------------------------------------------------------------
# Shapes, masks, heads
# ------------------------------------------------------------------------------------------

def test_configs() -> None:
    assert (FULL.student_backbone, FULL.student_input, FULL.student_dim, FULL.student_grid) == (
        "tf_efficientnet_b5", 512, 2048, 16)
    assert FULL.student_norm == ((0.3089,), (0.2505,)) and FULL.student_pad_size == 456
    assert (FULL.dino_prototypes, FULL.dino_bottleneck, FULL.ibot_prototypes, FULL.ibot_bottleneck) == (
        131072, 384, 131072, 256)
    assert config_from_dict(asdict(TINY)) == TINY
    with pytest.raises(ValueError):
        config_for("huge")


def test_tiny_shapes_and_static_padding_equals_dynamic_at_its_size() -> None:
    student = build_student(TINY).eval()
    x = torch.randn(2, 3, TINY.student_input, TINY.student_input)
    with torch.no_grad():
        out = student(x)
        grid = student.feature_grid(x)
    assert grid.shape == (2, TINY.student_dim, TINY.student_grid, TINY.student_grid)
    assert out["feature"].shape == (2, TINY.student_dim)
    assert (out["birads"].shape, out["density"].shape, out["findings"].shape) == ((2, 6), (2, 4), (2, 10))
    assert torch.allclose(out["feature"], grid.mean(dim=(2, 3)))
    dynamic = build_student(replace(TINY, student_pad_size=None)).eval()
    dynamic.load_state_dict(student.state_dict())
    with torch.no_grad():
        assert torch.allclose(dynamic.features(x), out["feature"], atol=1e-6)

    teacher = build_teacher(TINY).eval()
    with torch.no_grad():
        for side in (TINY.teacher_global, TINY.teacher_local):
            res = teacher(torch.randn(2, 3, side, side))
            assert res["patch"].shape == (2, (side // 14) ** 2, 192)
            assert res["dino"].shape == (2, TINY.dino_prototypes)
            assert teacher.ibot_head(res["patch"]).shape == (2, (side // 14) ** 2, TINY.ibot_prototypes)


def test_full_shapes() -> None:
    student = build_student(FULL).eval()
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        grid = student.feature_grid(x)
        out = student(x)
    assert grid.shape == (1, 2048, 16, 16)
    assert out["feature"].shape == (1, 2048) and out["birads"].shape == (1, 6)
    del student

    teacher = build_teacher(FULL).eval()
    assert teacher.backbone.pos_embed.shape == (1, 257, 768)
    assert teacher.backbone.mask_token.shape == (1, 768)
    assert (teacher.backbone.embed_dim, teacher.backbone.patch_size, len(teacher.backbone.blocks)) == (768, 14, 12)
    assert teacher.ibot_head.last_layer.weight_v.shape == (131072, 256)
    with torch.no_grad():
        res = teacher(torch.randn(1, 3, 224, 224))
    assert res["cls"].shape == (1, 768) and res["patch"].shape == (1, 256, 768)
    assert res["dino"].shape == (1, 131072)


def test_masks_replace_patch_content() -> None:
    teacher = build_teacher(TINY).eval()
    with torch.no_grad():
        teacher.backbone.mask_token.normal_()
    x = torch.randn(2, 3, 56, 56)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [0, 5, 6]] = True
    masks[1, 15] = True
    with torch.no_grad():
        plain = teacher.backbone(x)
        unmasked = teacher.backbone(x, torch.zeros_like(masks))
        masked = teacher.backbone(x, masks)
        x2 = x.clone()
        x2[0, :, 0:14, 0:14] = 7.0  # patch 0 of image 0: masked, so its pixels must not matter
        masked2 = teacher.backbone(x2, masks)
    assert torch.equal(plain["patch"], unmasked["patch"])
    assert not torch.allclose(masked["patch"], plain["patch"])
    assert not torch.allclose(masked["cls"], plain["cls"])
    assert torch.allclose(masked["patch"], masked2["patch"], atol=1e-6)


def test_teacher_blocks_match_timm_at_the_trained_grid() -> None:
    """Our forward only changes masking and off-grid interpolation; at 224-equivalent it is timm's."""
    from timm.models.vision_transformer import VisionTransformer

    teacher = build_teacher(TINY).eval()
    x = torch.randn(2, 3, TINY.teacher_global, TINY.teacher_global)
    with torch.no_grad():
        ours = teacher.backbone(x)
        timm_tokens = VisionTransformer.forward_features(teacher.backbone, x)
        assert torch.allclose(ours["cls"], timm_tokens[:, 0], atol=1e-6)
        assert torch.allclose(ours["patch"], timm_tokens[:, 1:], atol=1e-6)
        assert teacher.backbone.interpolated_pos_embed(4, 4) is teacher.backbone.pos_embed
        assert teacher.backbone.interpolated_pos_embed(37, 2).shape == (1, 1 + 74, 192)


def test_dino_head_last_layer_norm_is_fixed() -> None:
    head = DINOHead(32, 50, hidden_dim=24, bottleneck_dim=16)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert not head.last_layer.weight_g.requires_grad
    assert torch.equal(head.last_layer.weight_g, torch.ones(50, 1))
    optimiser = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    for _ in range(3):
        optimiser.zero_grad()
        head(torch.randn(8, 32)).pow(2).sum().backward()
        optimiser.step()
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(50), atol=1e-5)
    assert torch.equal(head.last_layer.weight_g, torch.ones(50, 1))
    out = head(torch.randn(4, 32))
    assert out.shape == (4, 50) and out.abs().max() <= 1 + 1e-5  # cosine similarities


# ------------------------------------------------------------------------------------------
# Our checkpoint format, dropout
# ------------------------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path: Path) -> None:
    student = build_student(TINY).eval()
    teacher = build_teacher(TINY).eval()
    save_checkpoint(student, tmp_path / "student.pt", extra={"epoch": 3})
    save_checkpoint(teacher, tmp_path / "teacher.pt")
    student2 = load_checkpoint(tmp_path / "student.pt", kind="student")
    teacher2 = load_checkpoint(tmp_path / "teacher.pt")
    assert isinstance(student2, VersaMammoStudent) and isinstance(teacher2, VersaMammoTeacher)
    assert student2.cfg == TINY and teacher2.cfg == TINY and not student2.training
    x = torch.randn(2, 3, 128, 128)
    t = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        a, b = student(x), student2(x)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(teacher(t)["dino"], teacher2(t)["dino"])
    with pytest.raises(ValueError, match="expected"):
        load_checkpoint(tmp_path / "teacher.pt", kind="student")
    torch.save({"module.image_encoder._conv_stem.weight": torch.zeros(1)}, tmp_path / "official.pth")
    with pytest.raises(ValueError, match="not a mammo-node"):
        load_checkpoint(tmp_path / "official.pth")


def test_dropout_only_in_train_mode() -> None:
    student = build_student(TINY)
    x = torch.randn(4, 3, 128, 128)
    student.eval()
    with torch.no_grad():
        first, second = student(x), student(x)
    assert all(torch.equal(first[k], second[k]) for k in first)
    student.dropout.train()  # backbone stays in eval: only the head dropout is stochastic
    torch.manual_seed(0)
    with torch.no_grad():
        dropped = student(x)
    assert torch.equal(dropped["feature"], first["feature"])  # the returned feature is never dropped
    assert not torch.allclose(dropped["birads"], first["birads"])


def test_tf_same_pads() -> None:
    assert tf_same_pads((57, 57), (3, 3), (2, 2), (1, 1)) == (1, 1, 1, 1)
    assert tf_same_pads((64, 64), (3, 3), (2, 2), (1, 1)) == (0, 1, 0, 1)
    assert tf_same_pads((32, 29), (5, 5), (2, 2), (1, 1)) == (2, 2, 1, 2)
