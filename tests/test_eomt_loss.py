"""d2reg.modeling.eomt_loss.EoMTCriterion against transformers' Mask2FormerLoss / Mask2FormerHungarianMatcher
(the classes the official EoMT ``MaskClassificationLoss`` subclasses).

How the random point sampling is made comparable: both implementations draw every random point from
torch's global RNG and in the same order (per image one ``torch.rand(1, P, 2)`` in the matcher, then
``torch.rand(M, 3P, 2)`` for the importance candidates and ``torch.rand(M, P/4, 2)`` for the uniform
points), so after the same ``torch.manual_seed`` they sample exactly the same coordinates and the losses
must agree to float rounding. This is not vacuous: ``test_sampling_matters`` shows that another seed
changes the losses far beyond the tolerance, so a different sampling order or a different loss formula
would fail the comparison. The matcher indices are compared with transformers' matcher on the same seed.
"""
from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerHungarianMatcher, Mask2FormerLoss

from d2reg.modeling.eomt_loss import EoMTCriterion

C, Q, H, W = 7, 10, 48, 64  # classes, queries, target size (4x the logits' 12 x 16)
P = 400  # points per mask (small: fast on the CPU; the sampling is compared point for point anyway)
WEIGHTS = dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0)


def _targets(ks: list[int], gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """K_i random rectangles per image (at H x W), random labels in [0, C)."""
    out = []
    for k in ks:
        masks = torch.zeros(k, H, W)
        for m in masks:
            y0, x0 = (int(torch.randint(0, n - 8, (1,), generator=gen)) for n in (H, W))
            y1 = y0 + 4 + int(torch.randint(0, H - y0 - 4, (1,), generator=gen))
            x1 = x0 + 4 + int(torch.randint(0, W - x0 - 4, (1,), generator=gen))
            m[y0:y1, x0:x1] = 1
        out.append({"labels": torch.randint(0, C, (k,), generator=gen), "masks": masks})
    return out


def _batch(ks: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n = len(ks)
    mask_logits = (3 * torch.randn(n, Q, H // 4, W // 4, generator=gen)).requires_grad_()
    class_logits = torch.randn(n, Q, C + 1, generator=gen).requires_grad_()
    return mask_logits, class_logits, _targets(ks, gen)


def _criterion(**kw) -> EoMTCriterion:
    return EoMTCriterion(C, **WEIGHTS, no_object_weight=0.1, num_points=P, oversample_ratio=3.0,
                         importance_sample_ratio=0.75, **kw)


def _hf_loss() -> Mask2FormerLoss:
    cfg = Mask2FormerConfig(num_labels=C, no_object_weight=0.1, train_num_points=P, oversample_ratio=3.0,
                            importance_sample_ratio=0.75, **WEIGHTS)
    return Mask2FormerLoss(cfg, weight_dict={})


def _hf_weighted(losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"loss_ce": WEIGHTS["class_weight"] * losses["loss_cross_entropy"],
            "loss_mask": WEIGHTS["mask_weight"] * losses["loss_mask"],
            "loss_dice": WEIGHTS["dice_weight"] * losses["loss_dice"]}


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b) == {"loss_ce", "loss_mask", "loss_dice"}
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.parametrize("ks", [[3, 0, 5, 1], [0, 0]])
def test_equals_transformers(ks):
    """Same inputs, same seed: equal weighted losses and equal gradients (incl. images with 0 targets)."""
    mask_logits, class_logits, targets = _batch(ks)
    torch.manual_seed(123)
    ours = _criterion()(mask_logits, class_logits, targets)
    g_ours = torch.autograd.grad(sum(ours.values()), [mask_logits, class_logits])

    torch.manual_seed(123)
    hf = _hf_weighted(_hf_loss()(mask_logits, class_logits, [t["masks"] for t in targets],
                                 [t["labels"] for t in targets]))
    g_hf = torch.autograd.grad(sum(hf.values()), [mask_logits, class_logits])
    _assert_close(ours, hf)
    for a, b in zip(g_ours, g_hf):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if sum(ks):
        assert ours["loss_mask"] > 0.1 and ours["loss_dice"] > 0.1
    else:  # nothing to match: zero mask losses, every query supervised as no-object
        assert ours["loss_mask"] == 0 and ours["loss_dice"] == 0
        nll = -F.log_softmax(class_logits, -1)[..., C].mean()
        torch.testing.assert_close(ours["loss_ce"], 2.0 * nll)


def test_sampling_matters():
    """A different seed moves the point-sampled losses well beyond the comparison tolerance."""
    mask_logits, class_logits, targets = _batch([3, 0, 5, 1])
    crit = _criterion()
    mask_logits, class_logits = mask_logits.detach(), class_logits.detach()
    torch.manual_seed(123)
    a = crit(mask_logits, class_logits, targets)
    torch.manual_seed(321)
    b = crit(mask_logits, class_logits, targets)
    for key in ("loss_mask", "loss_dice"):
        assert abs(float(a[key] - b[key])) > 1e-3, key


def test_indices_equal_transformers_matcher():
    mask_logits, class_logits, targets = _batch([3, 0, 5, 1, Q], seed=1)
    torch.manual_seed(7)
    ours = _criterion().match(mask_logits, class_logits, targets)
    torch.manual_seed(7)
    hf = Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=P)(
        mask_logits, class_logits, [t["masks"] for t in targets], [t["labels"] for t in targets])
    assert [len(q) for q, _ in ours] == [3, 0, 5, 1, Q]
    for (q1, t1), (q2, t2) in zip(ours, hf):
        assert q1.dtype == t1.dtype == torch.int64
        assert torch.equal(q1, q2) and torch.equal(t1, t2)
    assert not all(torch.equal(q, torch.arange(len(q))) for q, _ in ours)  # a non-trivial assignment


def test_more_targets_than_queries_normalizes_by_matched_pairs():
    """K > Q: only Q pairs are matched; EoMT divides the mask losses by the matched count (transformers'
    own forward would divide by sum K), the rest is transformers' computation."""
    ks = [Q + 3, 2]
    mask_logits, class_logits, targets = _batch(ks, seed=2)
    torch.manual_seed(5)
    ours = _criterion()(mask_logits, class_logits, targets)

    hf_loss = _hf_loss()
    masks, labels = [t["masks"] for t in targets], [t["labels"] for t in targets]
    torch.manual_seed(5)
    indices = hf_loss.matcher(mask_logits, class_logits, masks, labels)
    matched = sum(len(j) for _, j in indices)
    assert matched == Q + 2
    hf = _hf_weighted({**hf_loss.loss_masks(mask_logits, masks, indices, matched),
                       **hf_loss.loss_labels(class_logits, labels, indices)})
    _assert_close(ours, hf)


def test_gradients_flow():
    mask_logits, class_logits, targets = _batch([3, 0, 5, 1])
    torch.manual_seed(0)
    crit = _criterion()
    losses = crit(mask_logits, class_logits, targets)
    sum(losses.values()).backward()
    assert torch.isfinite(mask_logits.grad).all() and torch.isfinite(class_logits.grad).all()
    torch.manual_seed(0)
    indices = crit.match(mask_logits, class_logits, targets)
    for i, (q, _) in enumerate(indices):
        per_query = mask_logits.grad[i].abs().flatten(1).sum(1)  # (Q,)
        matched = torch.zeros(Q, dtype=torch.bool)
        matched[q] = True
        assert (per_query[matched] > 0).all() and (per_query[~matched] == 0).all()  # masks: matched only
    assert (class_logits.grad.abs().sum(-1) > 0).all()  # every query gets a class gradient


def test_loss_decreases_toward_targets():
    """Interpolating random logits toward logits that encode the targets (planted on a fixed set of
    queries) lowers every term, and at the end the matcher finds the planted queries."""
    ks = [3, 0, 5, 1]
    mask_logits, class_logits, targets = _batch(ks, seed=3)
    mask_logits, class_logits = mask_logits.detach(), class_logits.detach()
    ideal_masks = torch.full_like(mask_logits, -6.0)
    ideal_classes = torch.zeros_like(class_logits)
    ideal_classes[..., C] = 6.0
    planted = []
    for i, t in enumerate(targets):
        queries = torch.randperm(Q, generator=torch.Generator().manual_seed(i))[: len(t["labels"])]
        planted.append(queries)
        if not len(queries):
            continue
        ideal_masks[i, queries] = 6.0 * (2 * F.avg_pool2d(t["masks"][None], 4)[0] - 1)
        ideal_classes[i, queries] = 6.0 * F.one_hot(t["labels"], C + 1).float()
    crit = _criterion()
    previous = None
    for alpha in (0.0, 0.5, 1.0):
        m = (1 - alpha) * mask_logits + alpha * ideal_masks
        c = (1 - alpha) * class_logits + alpha * ideal_classes
        torch.manual_seed(0)
        losses = {k: float(v) for k, v in crit(m, c, targets).items()}
        if previous is not None:
            assert all(losses[k] < previous[k] for k in losses), (alpha, losses, previous)
        previous = losses
    torch.manual_seed(0)
    for (q, j), queries in zip(crit.match(m, c, targets), planted):
        assert torch.equal(queries[j], q)  # every target matched to the query it was planted on


def test_bool_masks_and_no_grad_targets():
    mask_logits, class_logits, targets = _batch([2, 4])
    crit = _criterion()
    torch.manual_seed(0)
    a = crit(mask_logits, class_logits, targets)
    torch.manual_seed(0)
    b = crit(mask_logits, class_logits, [{"labels": t["labels"], "masks": t["masks"].bool()} for t in targets])
    _assert_close(a, b)


def test_clear_errors():
    mask_logits, class_logits, targets = _batch([2])
    with pytest.raises(ValueError, match="num_classes=6"):
        EoMTCriterion(C - 1, num_points=P)(mask_logits, class_logits, targets)
    bad = [{"labels": torch.tensor([0, C]), "masks": targets[0]["masks"]}]
    with pytest.raises(ValueError, match="outside"):
        _criterion()(mask_logits, class_logits, bad)
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        _criterion()(mask_logits, class_logits, targets * 2)
    assert "empty_weight" not in _criterion().state_dict()  # a config constant, not checkpointed


DDP_KS = ([3, 0], [1])  # matched pairs per rank: 3 and 1, mean 2


def _ddp_worker(out_dir: str) -> None:
    from detectron2.utils import comm

    rank = comm.get_rank()
    mask_logits, class_logits, targets = _batch(DDP_KS[rank], seed=10 + rank)
    torch.manual_seed(rank)
    losses = _criterion()(mask_logits.detach(), class_logits.detach(), targets)
    torch.save(losses, f"{out_dir}/losses_rank{rank}.pth")


def test_num_masks_averaged_over_workers(tmp_path):
    """2 gloo processes (detectron2's ``launch``): the mask losses are divided by the mean matched count
    over the workers, i.e. a rank with n_r pairs gets its single-process loss times n_r / mean."""
    from detectron2.engine import launch

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch(_ddp_worker, 2, num_machines=1, machine_rank=0, dist_url=f"tcp://127.0.0.1:{port}",
           args=(str(tmp_path),))
    counts = [sum(ks) for ks in DDP_KS]
    for rank in (0, 1):
        ddp = torch.load(tmp_path / f"losses_rank{rank}.pth")
        mask_logits, class_logits, targets = _batch(DDP_KS[rank], seed=10 + rank)
        torch.manual_seed(rank)
        single = _criterion()(mask_logits.detach(), class_logits.detach(), targets)
        scale = counts[rank] / (sum(counts) / 2)
        torch.testing.assert_close(ddp["loss_ce"], single["loss_ce"])  # CE: a per-process mean
        torch.testing.assert_close(ddp["loss_mask"], single["loss_mask"] * scale)
        torch.testing.assert_close(ddp["loss_dice"], single["loss_dice"] * scale)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_transformers_and_autocast():
    """On the GPU (points drawn from the CUDA RNG by both, in the same order): equal to transformers in
    float32, and under bf16 autocast finite and close to float32 (the matcher runs in float32)."""
    mask_logits, class_logits, targets = _batch([3, 0, 5, 1])
    mask_logits, class_logits = mask_logits.detach().cuda(), class_logits.detach().cuda()
    targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    crit = _criterion().cuda()
    torch.manual_seed(0)
    ours = crit(mask_logits, class_logits, targets)
    torch.manual_seed(0)
    hf = _hf_weighted(_hf_loss().cuda()(mask_logits, class_logits, [t["masks"] for t in targets],
                                        [t["labels"] for t in targets]))
    _assert_close(ours, hf)
    torch.manual_seed(0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        amp = crit(mask_logits.bfloat16(), class_logits.bfloat16(), targets)
    for key in ours:
        assert torch.isfinite(amp[key]) and amp[key].dtype == torch.float32
        torch.testing.assert_close(amp[key], ours[key], rtol=5e-2, atol=5e-2, msg=key)
