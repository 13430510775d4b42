"""Stage-1 SSL building blocks: schedules, losses, centering, masking, augmentation, EMA, helpers."""
from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training import distributed as du
from training.checkpoint import (
    atomic_torch_save,
    capture_rng_state,
    latest_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    state_fingerprint,
)
from training.config import TrainConfig
from training.metrics_log import MetricsLogger, read_metrics
from training.schedules import cosine_schedule, linear_warmup_constant
from training.versamammo.ssl.augment import AugmentConfig, MultiCropAugmentation, random_resized_crop_params
from training.versamammo.ssl.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, sinkhorn_knopp
from training.versamammo.ssl.masking import BlockMaskGenerator, SSLCollate, make_masks, mask_index_and_weights
from training.versamammo.ssl.meta_arch import SSLMetaArch, last_layer_parameters
from training.versamammo.ssl.train import build_schedules, no_weight_decay, official_teacher_state, param_groups




def _tiny():
    from models.versamammo.checkpoint import config_for

    return config_for("tiny")


# ------------------------------------------------------------------------------ schedules
def test_cosine_schedule_endpoints_and_shape() -> None:
    s = cosine_schedule(1.0, 0.1, total_iters=100, warmup_iters=10, start_warmup_value=0.0)
    assert len(s) == 100
    assert s[0] == 0.0 and s[9] == pytest.approx(0.9)  # linear warmup, base reached at iteration 10
    assert s[10] == pytest.approx(1.0)
    assert all(s[i] >= s[i + 1] for i in range(10, 99))  # cosine decays monotonically
    assert 0.1 < s[99] < 0.101
    assert s[100] == 0.1 and s[10_000] == 0.1  # past the end: the final value
    frozen = cosine_schedule(1.0, 0.0, 20, warmup_iters=5, freeze_iters=3)
    assert frozen.values[:3].tolist() == [0.0, 0.0, 0.0] and frozen[8] == pytest.approx(1.0)
    t = linear_warmup_constant(0.04, 0.07, total_iters=10, warmup_iters=4)
    assert t[0] == 0.04 and t[4] == pytest.approx(0.07) and t[9] == pytest.approx(0.07) and t[50] == 0.07
    assert t[2] == pytest.approx(0.055)


def test_ssl_schedules_follow_the_official_recipe() -> None:
    ssl = TrainConfig().ssl.model_copy(update={"epochs": 10, "iterations_per_epoch": 4, "warmup_epochs": 2,
                                               "warmup_teacher_temp_epochs": 3, "freeze_last_layer_epochs": 1,
                                               "batch_size_per_rank": 64})
    sch = build_schedules(ssl, world_size=4)
    peak = 1e-4 * math.sqrt(64 * 4 / 1024)  # sqrt scaling against batch 1024
    assert sch.peak_lr == pytest.approx(peak) and sch.total_iterations == 40
    assert sch.lr[0] == 0.0 and sch.lr[8] == pytest.approx(peak) and sch.lr[40] == pytest.approx(1e-6)
    assert sch.last_layer_lr.values[:4].tolist() == [0.0] * 4  # frozen for the first epoch
    assert sch.last_layer_lr[4] == pytest.approx(sch.lr[4]) and sch.last_layer_lr[20] == pytest.approx(sch.lr[20])
    assert sch.wd[0] == pytest.approx(0.04) and sch.wd[40] == pytest.approx(0.2)
    assert sch.momentum[0] == pytest.approx(0.994) and sch.momentum[40] == pytest.approx(1.0)
    assert sch.teacher_temp[0] == pytest.approx(0.04) and sch.teacher_temp[12] == pytest.approx(0.07)
    assert sch.teacher_temp[39] == pytest.approx(0.07)


# --------------------------------------------------------------------------------- losses
def test_dino_loss_equals_hand_computation() -> None:
    s = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.4, 0.1]])
    t = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    temp = 0.1
    expected = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        z = [v / temp for v in srow]
        lse = math.log(sum(math.exp(v) for v in z))
        expected += -sum(p * (v - lse) for p, v in zip(trow, z))
    expected /= 2
    loss = DINOLoss(3, student_temp=temp).pair_losses([s], [t])
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # two student chunks x two teacher chunks = four pair means summed
    assert float(DINOLoss(3, student_temp=temp).pair_losses([s, s], [t, t])) == pytest.approx(4 * expected, rel=1e-6)


def test_meta_arch_dino_pairs_cross_matched_globals_and_locals_against_both() -> None:
    """The meta-architecture's DINO/iBOT/KoLeo numbers equal a loop over the pairs by hand."""
    torch.manual_seed(0)
    ssl = TrainConfig().ssl.model_copy(update={"drop_path_rate": 0.0, "koleo_loss_weight": 0.1})
    meta = SSLMetaArch(_tiny(), ssl)
    # make the student differ from the teacher so that the cross-matching matters
    with torch.no_grad():
        for p in meta.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    B, L = 3, 2
    g = torch.randn(2 * B, 3, 56, 56)
    loc = torch.randn(L * B, 3, 28, 28)
    masks = torch.zeros(2 * B, 16, dtype=torch.bool)
    masks[0, :5] = True
    masks[4, 3:7] = True
    idx, w = mask_index_and_weights(masks)
    batch = {"global_crops": g, "local_crops": loc, "masks": masks, "mask_indices": idx, "mask_weights": w}
    temp = 0.05
    loss, parts = meta(batch, temp)

    with torch.no_grad():
        t_out = meta.teacher.backbone(g)
        t_cls = t_out["cls"]
        t_probs = torch.softmax(meta.teacher.dino_head(t_cls) / temp, dim=-1)  # centre is zero at the start
        s_out = meta.student.backbone(g, masks=masks)
        s_glob = meta.student.dino_head(s_out["cls"])
        s_loc = meta.student.dino_head(meta.student.backbone(loc)["cls"])

        def ce(tp, sl):
            return float(-(tp * torch.log_softmax(sl / 0.1, dim=-1)).sum(-1).mean())

        A, Bc = slice(0, B), slice(B, 2 * B)
        pairs = [ce(t_probs[Bc], s_glob[A]), ce(t_probs[A], s_glob[Bc])]  # A <-> B
        for i in range(L):
            for tc in (A, Bc):
                pairs.append(ce(t_probs[tc], s_loc[i * B:(i + 1) * B]))
        dino = sum(pairs) / len(pairs)

        t_patch = meta.teacher.ibot_head(t_out["patch"][masks])
        s_patch = meta.student.ibot_head(s_out["patch"][masks])
        t_p = torch.softmax(t_patch / temp, dim=-1)
        per_token = -(t_p * torch.log_softmax(s_patch / 0.1, dim=-1)).sum(-1)
        ibot = float(per_token[:5].mean() + per_token[5:].mean()) / (2 * B)

        def koleo(x):
            x = torch.nn.functional.normalize(x, dim=-1)
            d = torch.cdist(x, x) + torch.eye(len(x)) * 10
            return float(-torch.log(d.min(dim=1).values + 1e-8).mean())

        kol = 0.1 * (koleo(s_out["cls"][A]) + koleo(s_out["cls"][Bc]))
    assert float(parts["dino_loss"]) == pytest.approx(dino, rel=1e-4)
    assert float(parts["dino_global_loss"] + parts["dino_local_loss"]) == pytest.approx(dino, rel=1e-4)
    assert float(parts["ibot_loss"]) == pytest.approx(ibot, rel=1e-4)
    assert float(parts["koleo_loss"]) == pytest.approx(kol, rel=1e-4, abs=1e-5)
    assert float(loss.detach()) == pytest.approx(dino + ibot + kol, rel=1e-4)


def test_centering_uses_then_moves_the_center() -> None:
    loss = DINOLoss(4, center_momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    probs = loss.targets(logits, teacher_temp=0.5, centering="centering")
    # the batch's targets are computed with the centre before the update (zero here)
    assert torch.allclose(probs, torch.softmax(logits / 0.5, dim=-1))
    mean = logits.mean(0, keepdim=True)
    assert torch.allclose(loss.center, 0.1 * mean)
    loss.targets(logits, 0.5, "centering")
    assert torch.allclose(loss.center, 0.9 * 0.1 * mean + 0.1 * mean)
    shifted = loss.softmax_center_teacher(logits, 0.5)
    assert torch.allclose(shifted, torch.softmax((logits - loss.center) / 0.5, dim=-1))
    before = loss.center.clone()
    loss.update_center(torch.zeros(0, 4))  # nothing to average (no masked tokens anywhere): unchanged
    assert torch.equal(loss.center, before)


def test_sinkhorn_knopp_balances_prototypes_and_normalises_samples() -> None:
    torch.manual_seed(0)
    B, K = 32, 8
    logits = torch.randn(B, K) * 2 + torch.linspace(0, 3, K)  # some prototypes favoured
    q = sinkhorn_knopp(logits, teacher_temp=0.5, n_iterations=3)
    assert torch.allclose(q.sum(dim=1), torch.ones(B), atol=1e-5)  # each sample: a distribution
    proto = q.sum(dim=0)
    assert torch.allclose(proto.sum(), torch.tensor(float(B)), atol=1e-4)
    raw = torch.softmax(logits / 0.5, dim=-1).sum(0)
    assert (proto - B / K).abs().max() < 0.5 * (raw - B / K).abs().max()  # much more balanced than softmax
    q50 = sinkhorn_knopp(logits, teacher_temp=0.5, n_iterations=50)
    assert torch.allclose(q50.sum(dim=0), torch.full((K,), B / K), atol=1e-3)  # converges to equal use
    # exp(150) overflows float32: finite only thanks to the max subtraction
    q_big = sinkhorn_knopp(torch.rand(B, K) * 2 + 5, teacher_temp=0.04)
    assert torch.isfinite(q_big).all() and torch.allclose(q_big.sum(1), torch.ones(B), atol=1e-4)
    # iBOT path through the loss module
    targets = IBOTPatchLoss(K).targets(logits, 0.5, "sinkhorn_knopp", n_samples_total=B)
    assert torch.allclose(targets, q, atol=1e-6)


def test_koleo_decreases_when_points_spread() -> None:
    torch.manual_seed(0)
    base = torch.randn(1, 16)
    clustered = base + 0.01 * torch.randn(8, 16)
    spread = torch.randn(8, 16)
    koleo = KoLeoLoss()
    assert koleo(spread) < koleo(clustered)
    eye = torch.eye(4)  # orthonormal: every nearest neighbour at distance sqrt(2)
    assert float(koleo(eye)) == pytest.approx(-math.log(math.sqrt(2)), abs=1e-5)
    x = clustered.clone().requires_grad_(True)
    koleo(x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# -------------------------------------------------------------------------------- masking
def _components(mask: np.ndarray) -> list[int]:
    seen = np.zeros_like(mask)
    sizes = []
    for i, j in zip(*np.nonzero(mask)):
        if seen[i, j]:
            continue
        stack, n = [(i, j)], 0
        seen[i, j] = True
        while stack:
            a, b = stack.pop()
            n += 1
            for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                x, y = a + da, b + db
                if 0 <= x < mask.shape[0] and 0 <= y < mask.shape[1] and mask[x, y] and not seen[x, y]:
                    seen[x, y] = True
                    stack.append((x, y))
        sizes.append(n)
    return sizes


def test_block_masks_are_contiguous_blocks_within_the_ratio_bounds() -> None:
    grid = (16, 16)
    n = 256
    gen = BlockMaskGenerator(grid, max_num_patches=128, min_num_patches=4)
    g = torch.Generator().manual_seed(0)
    # a single block is a filled rectangle of at least 3 patches (area >= 4 before rounding)
    for _ in range(20):
        mask = np.zeros(grid, dtype=bool)
        assert gen._add_block(mask, 40, g) > 0
        rows, cols = np.nonzero(mask)
        box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and 3 <= box.size <= 40
    fractions, in_blocks, total = [], 0, 0
    for _ in range(10):
        masks = make_masks(16, grid, g, mask_probability=0.5, ratio_min=0.1, ratio_max=0.5, mask_generator=gen)
        assert masks.shape == (16, n)
        counts = masks.sum(1)
        assert int((counts > 0).sum()) == 8  # half of the crops masked
        assert int(counts.max()) <= int(0.5 * n)
        for m in masks[counts > 0]:
            fractions.append(float(m.sum()) / n)
            sizes = _components(m.view(grid).numpy())
            in_blocks += sum(c for c in sizes if c >= 4)
            total += sum(sizes)
    # blocks, not scattered patches: only the last, budget-limited block of a mask may be tiny
    assert in_blocks >= 0.9 * total
    assert 0.1 - 0.03 <= min(fractions) and max(fractions) <= 0.5
    assert 0.2 < float(np.mean(fractions)) < 0.4  # stratified over [0.1, 0.5]


def test_collate_orders_crops_and_weights_masked_tokens_per_image() -> None:
    samples = [{"global_crops": [torch.full((3, 56, 56), float(10 * i + c)) for c in range(2)],
                "local_crops": [torch.full((3, 28, 28), float(100 + 10 * i + c)) for c in range(2)],
                "seed": i, "index": i} for i in range(4)]
    collate = SSLCollate(patch_size=14, global_size=56, mask_probability=0.5, ratio_min=0.1, ratio_max=0.5)
    b = collate(samples)
    assert [float(x[0, 0, 0]) for x in b["global_crops"]] == [0, 10, 20, 30, 1, 11, 21, 31]  # crop 1s, then crop 2s
    assert [float(x[0, 0, 0]) for x in b["local_crops"]] == [100, 110, 120, 130, 101, 111, 121, 131]
    masks = b["masks"]
    assert masks.shape == (8, 16) and masks.dtype == torch.bool
    assert torch.equal(b["mask_indices"], masks.flatten().nonzero().flatten())
    per_crop = torch.zeros(8).index_add_(0, b["mask_indices"] // 16, b["mask_weights"])
    masked = masks.any(1)
    assert torch.allclose(per_crop[masked], torch.ones(int(masked.sum())))  # each masked image weighs 1
    again = collate(samples)
    assert torch.equal(again["masks"], masks)  # a pure function of the samples' seeds


# --------------------------------------------------------------------------- augmentation
def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((256, 256)) * 255).astype(np.uint8)


def test_multicrop_shapes_and_determinism() -> None:
    cfg = AugmentConfig.from_configs(TrainConfig().ssl, _tiny())
    aug = MultiCropAugmentation(cfg)
    a = aug(_image(), torch.Generator().manual_seed(3))
    b = aug(_image(), torch.Generator().manual_seed(3))
    c = aug(_image(), torch.Generator().manual_seed(4))
    assert [tuple(x.shape) for x in a["global_crops"]] == [(3, 56, 56)] * 2
    assert [tuple(x.shape) for x in a["local_crops"]] == [(3, 28, 28)] * 2
    for x, y in zip(a["global_crops"] + a["local_crops"], b["global_crops"] + b["local_crops"]):
        assert torch.equal(x, y)
    assert not torch.equal(a["global_crops"][0], c["global_crops"][0])
    # grey in, grey replicated out: channels equal after undoing the per-channel normalisation
    x = a["global_crops"][1] * torch.tensor(cfg.std).view(3, 1, 1) + torch.tensor(cfg.mean).view(3, 1, 1)
    assert torch.allclose(x[0], x[1], atol=1e-5) and torch.allclose(x[0], x[2], atol=1e-5)
    # global scale (0.95, 1): crops cover nearly the whole image
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        _, _, h, w = random_resized_crop_params(256, 256, (0.95, 1.0), (3 / 4, 4 / 3), g)
        assert h * w >= 0.95 * 256 * 256 - 600


@pytest.mark.parametrize("bug", [False, True])
def test_gaussian_blur_probabilities_are_the_intended_ones(bug: bool) -> None:
    cfg = AugmentConfig(global_size=28, local_size=14, local_crops_number=2, official_blur_bug=bug)
    aug = MultiCropAugmentation(cfg)
    applied: dict[float, list[bool]] = {1.0: [], 0.1: [], 0.5: []}
    original = aug._blur

    def spy(img, p, g):
        out = original(img, p, g)
        applied[p].append(out is not img)
        return out

    aug._blur = spy
    img = _image()[:64, :64]
    for seed in range(300):
        aug(img, torch.Generator().manual_seed(seed))
    rate = {p: float(np.mean(v)) for p, v in applied.items()}
    if not bug:  # fixed: global 1 always, global 2 10%, locals 50%
        assert rate[1.0] == 1.0 and 0.04 < rate[0.1] < 0.17 and 0.4 < rate[0.5] < 0.6
    else:  # the official quirk: 1 - p
        assert rate[1.0] == 0.0 and 0.83 < rate[0.1] < 0.96 and 0.4 < rate[0.5] < 0.6


# ---------------------------------------------------------------------- EMA, grads, groups
def test_ema_update_formula_and_teacher_gets_no_gradients() -> None:
    torch.manual_seed(0)
    ssl = TrainConfig().ssl.model_copy(update={"drop_path_rate": 0.0})
    meta = SSLMetaArch(_tiny(), ssl)
    assert all(not p.requires_grad for p in meta.teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(meta.teacher.state_dict().values(), meta.student.state_dict().values()))
    g = torch.randn(4, 3, 56, 56)
    masks = torch.zeros(4, 16, dtype=torch.bool)
    masks[1, 2:8] = True
    idx, w = mask_index_and_weights(masks)
    loss, _ = meta({"global_crops": g, "local_crops": torch.randn(4, 3, 28, 28), "masks": masks,
                    "mask_indices": idx, "mask_weights": w}, 0.04)
    loss.backward()
    assert all(p.grad is None for p in meta.teacher.parameters())
    assert meta.student.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert meta.student.backbone.mask_token.grad is not None
    assert meta.student.ibot_head.mlp[0].weight.grad.abs().sum() > 0

    with torch.no_grad():
        for p in meta.student.parameters():
            p.add_(torch.randn_like(p))
    t0 = {k: v.clone() for k, v in meta.teacher.named_parameters()}
    s0 = dict(meta.student.named_parameters())
    meta.update_teacher(0.9)
    for name, t in meta.teacher.named_parameters():
        assert torch.allclose(t, 0.9 * t0[name] + 0.1 * s0[name], atol=1e-6), name
    meta.update_teacher(1.0)  # final momentum: the teacher stops moving
    t1 = {k: v.clone() for k, v in meta.teacher.named_parameters()}
    meta.update_teacher(1.0)
    assert all(torch.equal(t1[k], v) for k, v in meta.teacher.named_parameters())


def test_param_groups_weight_decay_and_lr_multipliers() -> None:
    torch.manual_seed(0)
    ssl = TrainConfig().ssl.model_copy(update={"layerwise_decay": 0.5})
    meta = SSLMetaArch(_tiny(), ssl)
    groups = param_groups(meta.student, ssl)
    ids = {id(p): g for g in groups for p in g["params"]}
    named = dict(meta.student.named_parameters())
    depth = len(meta.student.backbone.blocks)
    assert ids[id(named["backbone.pos_embed"])]["wd_multiplier"] == 0.0
    assert ids[id(named["backbone.cls_token"])]["wd_multiplier"] == 0.0
    assert ids[id(named["backbone.blocks.0.norm1.weight"])]["wd_multiplier"] == 0.0
    assert ids[id(named["backbone.blocks.0.attn.qkv.bias"])]["wd_multiplier"] == 0.0
    assert ids[id(named["backbone.blocks.0.attn.qkv.weight"])]["wd_multiplier"] == 1.0
    pe = ids[id(named["backbone.patch_embed.proj.weight"])]
    assert pe["lr_multiplier"] == pytest.approx(0.2 * 0.5 ** (depth + 1))  # layer 0 and patch-embed mult
    assert ids[id(named["backbone.blocks.0.attn.qkv.weight"])]["lr_multiplier"] == pytest.approx(0.5 ** depth)
    assert ids[id(named["dino_head.mlp.0.weight"])]["lr_multiplier"] == 1.0
    last = last_layer_parameters(meta.student)
    assert last and all(ids[id(p)]["is_last_layer"] for p in last)
    assert "dino_head.last_layer.weight_g" not in {n for n, p in named.items() if id(p) in ids}  # fixed at 1
    assert no_weight_decay("backbone.blocks.1.ls1.gamma", named["backbone.blocks.1.ls1.gamma"])


def test_official_key_layout_of_the_exported_teacher() -> None:
    state = {"backbone.blocks.5.attn.qkv.weight": torch.zeros(1), "backbone.cls_token": torch.zeros(1),
             "dino_head.mlp.0.weight": torch.zeros(1)}
    out = official_teacher_state(state, depth=12)
    assert set(out) == {"backbone.blocks.1.5.attn.qkv.weight", "backbone.cls_token", "dino_head.mlp.0.weight"}
    assert "backbone.blocks.3.3.x" in official_teacher_state({"backbone.blocks.3.x": torch.zeros(1)}, depth=4)


# ----------------------------------------------------------------- shared training helpers
def test_rng_capture_restore_round_trip() -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    state = capture_rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.random(), np.random.rand(), torch.rand(3)
    restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


def test_atomic_checkpoint_files_and_pruning(tmp_path) -> None:
    for it in (3, 10, 7):
        atomic_torch_save({"iteration": it, "w": torch.ones(2) * it}, tmp_path / f"checkpoint_{it:08d}.pt")
    (tmp_path / ".checkpoint_00000099.pt.abc.tmp").write_bytes(b"torn")  # an interrupted write
    assert latest_checkpoint(tmp_path).name == "checkpoint_00000010.pt"
    assert torch.load(latest_checkpoint(tmp_path), weights_only=True)["iteration"] == 10
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_00000007.pt",
                                                                        "checkpoint_00000010.pt"]
    a = {"x": torch.arange(4.0)}
    assert state_fingerprint(a) == state_fingerprint({"x": torch.arange(4.0)})
    assert state_fingerprint(a) != state_fingerprint({"x": torch.arange(4.0) + 1e-6})


def test_metrics_logger_resume_drops_records_past_the_checkpoint(tmp_path) -> None:
    path = tmp_path / "m.jsonl"
    with MetricsLogger(path) as log:
        for it in range(6):
            log.log({"iteration": it, "loss": float(it)})
    with MetricsLogger(path, resume_from=4) as log:
        log.log({"iteration": 4, "loss": 40.0})
    assert [r["iteration"] for r in read_metrics(path)] == [0, 1, 2, 3, 4]
    assert read_metrics(path)[-1]["loss"] == 40.0
    with MetricsLogger(tmp_path / "other.jsonl", enabled=False) as log:  # non-main ranks write nothing
        log.log({"iteration": 0})
    assert not (tmp_path / "other.jsonl").exists()
    assert json.loads(path.read_text().splitlines()[0])["iteration"] == 0


def test_distributed_helpers_single_process() -> None:
    info = du.init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (0, 1, False, True)
    t = torch.tensor([2.0, 4.0])
    assert torch.equal(du.all_reduce_mean(t.clone()), t) and torch.equal(du.all_reduce_sum(t.clone()), t)
    assert du.reduce_dict_mean({"b": 1.0, "a": torch.tensor(2.0)}) == {"a": 2.0, "b": 1.0}
    assert du.rank_seed(5, 3) == 8 and du.is_main() and du.get_world_size() == 1
    du.barrier()


def test_full_preset_is_the_released_schedule_and_ours_an_override():
    """Issue 20: the full preset runs the official 1000-epoch schedules ended at iteration 325k,
    4 images per GPU on the official 4 GPUs; ours (a finished 260-epoch cosine at 32 per GPU) is two
    overrides away and ends at the same iteration."""
    from pathlib import Path

    from training.config import load_train_config
    from training.versamammo.ssl.train import build_schedules

    full = Path("training/configs/versamammo_full.toml")
    official = load_train_config(full).ssl
    assert (official.epochs, official.stop_at_iteration, official.batch_size_per_rank) == (1000, 325_000, 4)
    sched = build_schedules(official, world_size=4)
    assert sched.total_iterations == 1_250_000
    assert abs(sched.peak_lr - 1e-4 * (16 / 1024) ** 0.5) < 1e-12
    # at the stop the official schedules are still early in their cosine: lr well above min_lr
    assert sched.lr.values[325_000 - 1] > 0.5 * sched.peak_lr
    ours = load_train_config(full, {"ssl.epochs": 260, "ssl.batch_size_per_rank": 32}).ssl
    mine = build_schedules(ours, world_size=4)
    assert mine.total_iterations == 325_000 == ours.stop_at_iteration
    assert mine.lr.values[-1] < 1.01 * ours.min_lr       # finished: annealed to min_lr at the stop
