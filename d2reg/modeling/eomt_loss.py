"""The Mask2Former set criterion as EoMT trains with it (official ``training/mask_classification_loss.py``,
a subclass of transformers' ``Mask2FormerLoss``), written on detectron2's PointRend point sampling.

Per image, a Hungarian matching (scipy's ``linear_sum_assignment``) pairs queries with targets on a cost
``class_weight * (-p[class]) + mask_weight * BCE + dice_weight * dice`` where BCE and dice are computed on
``num_points`` points drawn uniformly in the unit square (the same points for every query and target).
The matched pairs are then supervised with a sigmoid BCE and a dice loss on ``num_points`` points per mask
chosen by importance sampling (``oversample_ratio * num_points`` random candidates, the
``importance_sample_ratio`` most uncertain ones, uncertainty ``-|logit|``, plus uniform random points) and
every query with a softmax cross-entropy whose no-object class (the last one) is weighted by
``no_object_weight``. Mask losses are summed over matched pairs and divided by the number of matched
pairs averaged over the workers (at least 1), as EoMT does.

Points are drawn from torch's global RNG in the same order as transformers' ``Mask2FormerLoss`` (one
``torch.rand`` per image in the matcher, then the two draws of
:func:`~detectron2.projects.point_rend.point_features.get_uncertain_point_coords_with_randomness`), so
under the same seed both give the same numbers; ``tests/test_eomt_loss.py`` checks that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

__all__ = ["EoMTCriterion"]


def _pairwise_sigmoid_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean point-wise BCE of every prediction against every target.

    Args:
        logits: (Q, P) mask logits at P points.  targets: (K, P) binary targets at the same points.
    Returns:
        (Q, K) costs.
    """
    num_points = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points


def _pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss ``1 - (2|x y| + 1) / (|x| + |y| + 1)`` of every prediction against every target.

    Args:
        logits: (Q, P) mask logits.  targets: (K, P) binary targets.
    Returns:
        (Q, K) costs.
    """
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class EoMTCriterion(nn.Module):
    """Hungarian-matched class + point-sampled mask losses for EoMT / Mask2Former-style outputs.

    Args:
        num_classes: number of foreground classes C; class logits have C + 1 entries, the last one
            being "no object".
        class_weight, mask_weight, dice_weight: weights of the class CE, mask BCE and dice terms, used
            both as matching costs and as loss weights (EoMT: 2.0, 5.0, 5.0).
        no_object_weight: CE weight of the no-object class (EoMT: 0.1).
        num_points: points per mask for matching and for the mask losses (EoMT: 112 * 112 = 12544).
        oversample_ratio, importance_sample_ratio: PointRend importance sampling of the loss points.

    ``forward(mask_logits, class_logits, targets)`` returns ``{"loss_ce", "loss_mask", "loss_dice"}``,
    each a scalar ALREADY multiplied by its weight (sum them for the total loss).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"EoMTCriterion: num_classes must be >= 1, got {num_classes}.")
        if num_points < 1 or oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
            raise ValueError(
                "EoMTCriterion: need num_points >= 1, oversample_ratio >= 1 and 0 <= importance_sample_ratio"
                f" <= 1, got {num_points}, {oversample_ratio}, {importance_sample_ratio}."
            )
        self.num_classes = num_classes
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = no_object_weight
        # not persistent: a constant of the config, kept out of model checkpoints (official EoMT
        # checkpoints do carry a "criterion.empty_weight"; their loader drops it)
        self.register_buffer("empty_weight", class_weights, persistent=False)

    # ----------------------------------------------------------------------------- inputs
    def _check(self, mask_logits: Tensor, class_logits: Tensor, targets: list[dict[str, Tensor]]) -> None:
        if mask_logits.dim() != 4 or class_logits.dim() != 3 or mask_logits.shape[:2] != class_logits.shape[:2]:
            raise ValueError(
                "EoMTCriterion: expected mask_logits (N, Q, h, w) and class_logits (N, Q, C+1) with the same"
                f" N, Q; got {tuple(mask_logits.shape)} and {tuple(class_logits.shape)}."
            )
        if class_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"EoMTCriterion: class_logits have {class_logits.shape[-1]} entries per query but the criterion"
                f" was built for num_classes={self.num_classes} (+1 no-object); make them agree."
            )
        if len(targets) != mask_logits.shape[0]:
            raise ValueError(f"EoMTCriterion: {len(targets)} targets for a batch of {mask_logits.shape[0]} images.")
        for i, t in enumerate(targets):
            labels, masks = t["labels"], t["masks"]
            if labels.dim() != 1 or masks.dim() != 3 or labels.shape[0] != masks.shape[0]:
                raise ValueError(
                    f"EoMTCriterion: target {i} needs 'labels' (K,) and 'masks' (K, H, W), got"
                    f" {tuple(labels.shape)} and {tuple(masks.shape)}."
                )
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(
                    f"EoMTCriterion: target {i} has labels outside [0, {self.num_classes}) (contiguous ids,"
                    f" no-object excluded): min {int(labels.min())}, max {int(labels.max())}."
                )

    @staticmethod
    def _target_masks(targets: list[dict[str, Tensor]], dtype: torch.dtype) -> list[Tensor]:
        """The (K_i, H, W) target masks as ``dtype``, zero-padded (bottom/right) to the largest H, W of the
        batch, like detectron2's Mask2Former pads targets to the batched image size: point coordinates are
        normalized, so all targets must share the frame of the mask logits."""
        height = max(t["masks"].shape[-2] for t in targets)
        width = max(t["masks"].shape[-1] for t in targets)
        out = []
        for t in targets:
            m = t["masks"].to(dtype)
            if m.shape[-2:] != (height, width):
                m = F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2]))
            out.append(m)
        return out

    # ----------------------------------------------------------------------------- matching
    def match(
        self, mask_logits: Tensor, class_logits: Tensor, targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Hungarian matching per image on ``num_points`` uniformly sampled points (in float32).

        Args:
            mask_logits: (N, Q, h, w).  class_logits: (N, Q, C+1).  targets: N dicts with "labels" (K_i,)
                and "masks" (K_i, H, W).
        Returns:
            N pairs ``(query_idx, target_idx)`` of int64 CPU tensors of length min(Q, K_i).
        """
        self._check(mask_logits, class_logits, targets)
        return self._match(mask_logits, class_logits, targets, self._target_masks(targets, torch.float32))

    @torch.no_grad()
    def _match(
        self, mask_logits: Tensor, class_logits: Tensor, targets: list[dict[str, Tensor]], masks: list[Tensor]
    ) -> list[tuple[Tensor, Tensor]]:
        device, num_queries = mask_logits.device, mask_logits.shape[1]
        indices = []
        with torch.autocast(device.type, enabled=False):
            for i, target in enumerate(targets):
                probs = class_logits[i].float().softmax(-1)  # (Q, C+1)
                cost_class = -probs[:, target["labels"].to(device)]  # (Q, K)
                coords = torch.rand(1, self.num_points, 2, device=device)
                pred = mask_logits[i].float()[:, None]  # (Q, 1, h, w)
                pred = point_sample(pred, coords.expand(num_queries, -1, -1), align_corners=False)[:, 0]  # (Q, P)
                tgt = masks[i].to(device=device, dtype=torch.float32)[:, None]  # (K, 1, H, W)
                tgt = point_sample(tgt, coords.expand(tgt.shape[0], -1, -1), align_corners=False)[:, 0]  # (K, P)
                cost = (self.class_weight * cost_class + self.mask_weight * _pairwise_sigmoid_ce(pred, tgt)
                        + self.dice_weight * _pairwise_dice(pred, tgt))
                big = torch.finfo(cost.dtype).max  # NaN / inf only matched when nothing else is left
                cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)
                rows, cols = linear_sum_assignment(cost.cpu())
                indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    # ----------------------------------------------------------------------------- losses
    def _num_masks(self, indices: list[tuple[Tensor, Tensor]], device: torch.device) -> Tensor:
        """Matched pairs in the batch, averaged over the workers, at least 1: a () float tensor."""
        num = torch.as_tensor(float(sum(len(t) for _, t in indices)), device=device)
        world_size = comm.get_world_size()
        if world_size > 1:
            torch.distributed.all_reduce(num)
        return torch.clamp(num / world_size, min=1)

    @torch.compiler.disable  # scipy matching and data-dependent shapes
    def forward(
        self, mask_logits: Tensor, class_logits: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Args:
            mask_logits: (N, Q, h, w) mask logits (EoMT: at 1/4 of the image size).
            class_logits: (N, Q, C+1) class logits, the last class being "no object".
            targets: N dicts, "labels" (K_i,) int64 in [0, C) and "masks" (K_i, H, W) float or bool, in the
                frame of the (padded) image the logits cover; H, W may differ from h, w and K_i may be 0.
        Returns:
            {"loss_ce", "loss_mask", "loss_dice"}: scalars already multiplied by their weights.
        """
        self._check(mask_logits, class_logits, targets)
        masks = self._target_masks(targets, torch.float32)
        indices = self._match(mask_logits, class_logits, targets, masks)
        device = mask_logits.device

        # classification: every query, unmatched ones to the no-object class
        batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([q for q, _ in indices]).to(device)
        target_classes = torch.full(class_logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        target_classes[batch_idx, query_idx] = torch.cat(
            [t["labels"].to(device)[j.to(device)] for t, (_, j) in zip(targets, indices)]
        )
        loss_ce = F.cross_entropy(class_logits.transpose(1, 2).float(), target_classes,
                                  weight=self.empty_weight.to(device))

        # masks: matched pairs only, on importance-sampled points
        pred = mask_logits[batch_idx, query_idx][:, None].float()  # (M, 1, h, w)
        tgt = torch.cat([m.to(device)[j.to(device)] for m, (_, j) in zip(masks, indices)])[:, None]  # (M,1,H,W)
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                pred, lambda logits: -logits.abs(), self.num_points, self.oversample_ratio,
                self.importance_sample_ratio,
            )  # (M, P, 2)
            point_labels = point_sample(tgt, coords, align_corners=False)[:, 0]  # (M, P)
        point_logits = point_sample(pred, coords, align_corners=False)[:, 0]  # (M, P)
        num_masks = self._num_masks(indices, device)
        loss_mask = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1)
        probs = point_logits.sigmoid()
        loss_dice = 1 - (2 * (probs * point_labels).sum(-1) + 1) / (probs.sum(-1) + point_labels.sum(-1) + 1)
        return {
            "loss_ce": self.class_weight * loss_ce,
            "loss_mask": self.mask_weight * loss_mask.sum() / num_masks,
            "loss_dice": self.dice_weight * loss_dice.sum() / num_masks,
        }
