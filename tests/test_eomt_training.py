"""EoMT's training pieces against the official tue-mps/eomt code (re-expressed here from its
``training/two_stage_warmup_poly_schedule.py`` and ``LightningModule.configure_optimizers`` /
``mask_annealing``): the two-stage warm-up + poly schedule, the layer-wise lr factors, and the mask
annealing driven by detectron2's trainer loop, reaching 0 on schedule while the real set loss trains."""
from __future__ import annotations

import itertools

import pytest
import torch
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.structures import BitMasks, Instances
from test_eomt_model import (
    _model,
    dinov3_file,  # noqa: F401  (the fixture)
)

from d2reg.engine import MaskAnnealingHook, mask_keep_probability
from d2reg.modeling.eomt_loss import EoMTCriterion
from d2reg.recipes import eomt_annealing_windows
from d2reg.solver import TwoStageWarmupPolyLR, eomt_lr_decay_rate, get_eomt_optimizer_params


def _official_lr(step: int, base: float, is_vit: bool, warmup, total: int, power: float) -> float:
    """tue-mps/eomt ``TwoStageWarmupPolySchedule.get_lr`` for one param group."""
    heads, vit = warmup
    if not is_vit:
        if heads > 0 and step < heads:
            return base * step / heads
        return base * (1 - max(0, step - heads) / max(1, total - heads)) ** power
    if step < heads:
        return 0.0
    if step < heads + vit:
        return base * (step - heads) / vit
    return base * (1 - max(0, step - heads - vit) / max(1, total - heads - vit)) ** power


@pytest.mark.parametrize("warmup,total", [((5, 10), 40), ((0, 0), 12), ((3, 0), 9)])
def test_two_stage_warmup_poly_equals_official(warmup, total):
    vit, head = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [vit], "lr": 0.5, "eomt_vit": True}, {"params": [head], "lr": 2.0}], lr=1.0)
    sched = TwoStageWarmupPolyLR(opt, max_iter=total, warmup_iters=warmup, power=0.9)
    for step in range(total + 1):
        got = [g["lr"] for g in opt.param_groups]
        want = [_official_lr(step, 0.5, True, warmup, total, 0.9), _official_lr(step, 2.0, False, warmup, total, 0.9)]
        assert got == pytest.approx(want, abs=1e-12), step
        opt.step()
        sched.step()
    assert got[0] == pytest.approx(0.0) and got[1] == pytest.approx(0.0)  # decayed to 0 at max_iter


def _official_lr_factors(vit: torch.nn.Module, llrd: float, num_query_blocks: int, decay_query_blocks: bool):
    """``configure_optimizers``' factor per backbone parameter: walk the names in reverse, a ``blocks.i``
    name sets the current block; blocks and everything met at block 0 (the stem) decay; the final norm
    and, without decay there, the query blocks stay at 1."""
    depth = len(vit.blocks)
    block_i = depth
    l2 = set(range(depth - num_query_blocks, depth))
    out = {}
    for name, _ in reversed(list(vit.named_parameters())):
        parts = name.split(".")
        is_block = "blocks" in parts
        if is_block:
            block_i = int(parts[parts.index("blocks") + 1])
        f = llrd ** (depth - 1 - block_i) if (is_block or block_i == 0) else 1.0
        if name.startswith("norm."):
            f = 1.0
        if is_block and block_i in l2 and not decay_query_blocks:
            f = 1.0
        out[name] = f
    return out


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
@pytest.mark.parametrize("decay_query_blocks", [True, False])
def test_layer_decay_equals_official(family, decay_query_blocks, dinov3_file):  # noqa: F811
    model = _model(family, dinov3_file)
    official = _official_lr_factors(model.backbone.vit, 0.8, model.num_blocks, decay_query_blocks)
    depth = len(model.backbone.vit.blocks)
    for name, _ in model.named_parameters():
        got = eomt_lr_decay_rate(name, 0.8, depth, model.num_blocks, decay_query_blocks)
        vit_name = name[len("backbone.vit."):] if name.startswith("backbone.vit.") else None
        assert got == pytest.approx(official[vit_name] if vit_name else 1.0), name
    groups = get_eomt_optimizer_params(model, base_lr=1e-4, weight_decay=0.05, lr_decay=0.8,
                                       decay_query_blocks=decay_query_blocks)
    vit_ids = {id(p) for p in model.backbone.vit.parameters()}
    assert all(g["weight_decay"] == 0.05 for g in groups)  # the official AdamW decays every parameter
    for g in groups:
        assert g["eomt_vit"] == (id(g["params"][0]) in vit_ids)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def _batch(seed: int, size: int = 64):
    """Two images with 1-3 random rectangles each (their masks and classes)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        k = int(torch.randint(1, 4, (1,), generator=g))
        masks = torch.zeros(k, size, size, dtype=torch.bool)
        for j in range(k):
            y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
            masks[j, y:y + size // 3, x:x + size // 3] = True
        inst = Instances((size, size), gt_classes=torch.randint(0, 5, (k,), generator=g), gt_masks=BitMasks(masks))
        out.append({"image": torch.rand(3, size, size, generator=g) * 255, "instances": inst})
    return out


def test_annealing_reaches_zero_on_schedule_while_training():
    model = _model("dinov2").train()
    model.criterion = EoMTCriterion(5, num_points=256)
    max_iter = 12
    starts, ends = eomt_annealing_windows(model.num_blocks, max_iter, "dinov2", "coco")
    assert starts == [2, 5, 8] and ends == [4, 7, 10]  # spread over 1/6..5/6 of the schedule, each 1/6 long
    opt = torch.optim.AdamW(get_eomt_optimizer_params(model, 1e-3, 0.05, 0.8), lr=1e-3)
    trainer = SimpleTrainer(model, itertools.cycle([_batch(0), _batch(1)]), opt)
    seen = []

    class Record(HookBase):  # reads the probabilities each step uses
        def before_step(self):
            seen.append(model.attn_mask_probs.tolist())

    trainer.register_hooks([MaskAnnealingHook((starts, ends)), Record()])
    trainer.train(0, max_iter)
    for it, probs in enumerate(seen):
        assert probs == pytest.approx([mask_keep_probability(it, s, e) for s, e in zip(starts, ends)]), it
    assert seen[3] == pytest.approx([0.5 ** 0.9, 1.0, 1.0])
    assert all(p == 0.0 for p in seen[ends[-1]]) and all(p == 0.0 for p in seen[-1])
    logged = trainer.storage.history("attn_mask_prob_2").values()
    assert [v for v, _ in logged] == pytest.approx([p[2] for p in seen])
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == max_iter and all(torch.isfinite(torch.tensor(v)) for v, _ in losses)
    names = set(trainer.storage.histories())
    for k in range(model.num_blocks):  # the set loss of every intermediate prediction, as the official code
        assert {f"loss_ce_block{k}", f"loss_mask_block{k}", f"loss_dice_block{k}"} <= names
    assert {"loss_ce", "loss_mask", "loss_dice"} <= names


def test_annealing_hook_errors():
    with pytest.raises(ValueError, match="later end"):
        MaskAnnealingHook(([5], [5]))
    hook = MaskAnnealingHook(([1, 2], [3, 4]), model=_model("dinov2"))
    with pytest.raises(ValueError, match="2 annealing windows for 3 query blocks"):
        hook.before_train()
    with pytest.raises(TypeError, match="anneals an EoMT"):
        MaskAnnealingHook(([1], [2]), model=torch.nn.Linear(2, 2)).before_train()
