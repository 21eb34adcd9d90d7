"""Reading several ViT blocks: the block rule and the one "normalise each block, concatenate" module.

The DINO papers' strongest dense protocols read more than the last block: DINOv3's frozen-backbone
detector and its linear probes concatenate evenly spaced blocks (9/19/29/39 of the 40-block ViT-7B),
RF-DETR / ViT-Adapter-style readers feed each pyramid level from its own depth. The family backbones
already return several blocks (``out_indices``); :class:`MultiLayerReader` is the one place that
normalises and concatenates them, used by :class:`d2reg.MultiLayerFeaturePyramid` and
:class:`d2reg.LinearSemSegHead` alike.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from ..vit import DINOv3Arch, ViTArch, get_arch, get_dinov3_arch

__all__ = ["READER_NORMS", "MultiLayerReader", "arch_spec", "default_in_blocks", "evenly_spaced_blocks"]

READER_NORMS = ("ln", "none")


def evenly_spaced_blocks(depth: int, n: int = 4) -> Tuple[int, ...]:
    """The DINOv3 rule: blocks ``m * depth / n - 1`` for ``m = 1..n`` (rounded down), the last block
    always included: ``(2, 5, 8, 11)`` for depth 12, ``(5, 11, 17, 23)`` for 24, ``(9, 19, 29, 39)`` for 40."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}.")
    if not isinstance(n, int) or not 1 <= n <= depth:
        raise ValueError(f"Cannot take {n!r} evenly spaced blocks of a {depth}-block ViT: n must be 1..{depth}.")
    return tuple(m * depth // n - 1 for m in range(1, n + 1))


def arch_spec(arch, family: str = "dinov2", **overrides) -> Union[ViTArch, DINOv3Arch]:
    """The architecture row of ``arch`` in ``family``'s table ("dinov2" or "dinov3"); ``overrides``
    (embed_dim, depth, num_heads) that are not None replace its numbers."""
    if family == "dinov3":
        return get_dinov3_arch(arch, **overrides)
    if family != "dinov2":
        raise ValueError(f"family must be 'dinov2' or 'dinov3', got {family!r}.")
    return get_arch(arch, **overrides)


def default_in_blocks(arch: str = "vit_base", family: str = "dinov2", depth: Optional[int] = None,
                      n: int = 4) -> Tuple[int, ...]:
    """:func:`evenly_spaced_blocks` of ``arch``'s depth (or ``depth`` when given): the default
    ``out_indices`` of a backbone under a multi-layer pyramid, e.g. in a LazyConfig
    ``out_indices=L(default_in_blocks)(arch="${..arch}", depth="${..depth}")``."""
    return evenly_spaced_blocks(arch_spec(arch, family, depth=depth).depth, n)


class MultiLayerReader(nn.Module):
    """Normalise each of several backbone features and concatenate them along channels.

    Input: ``{name: (N, C_i, h_i, w_i)}`` (a backbone's outputs; others are ignored). Output of
    :meth:`forward`: ``(N, sum C_i, h, w)`` on the first feature's grid ``h, w`` (a feature on another
    grid is resized bilinearly; a ViT's blocks share one grid). :meth:`normalized` gives the
    normalised features one by one, ``[(N, C_i, h_i, w_i)]``.

    ``norm="ln"``: a learnable LayerNorm over the channels of each feature (its own weight and bias),
    for raw block outputs (``final_norm=False``). ``norm="none"``: the features are used as they come,
    e.g. already normalised by the backbone's final norm (``final_norm=True``, which timm applies to
    every intermediate), or when the caller normalises the concatenation (the linear probe's BatchNorm).
    """

    def __init__(self, in_features: Sequence[str], channels: Sequence[int], norm: str = "ln", eps: float = 1e-6):
        """
        Args:
            in_features: feature names, in concatenation order.
            channels: their channel counts.
            norm: "ln" (LayerNorm per feature) or "none".
            eps: the LayerNorms' epsilon (DINOv2's 1e-6).
        """
        super().__init__()
        if norm not in READER_NORMS:
            raise ValueError(f"MultiLayerReader norm must be one of {READER_NORMS}, got {norm!r}.")
        if not in_features or len(in_features) != len(channels):
            raise ValueError(f"MultiLayerReader needs one channel count per feature, got {list(in_features)} "
                             f"and {list(channels)}.")
        self.in_features: List[str] = list(in_features)
        self.channels: List[int] = [int(c) for c in channels]
        self.norm = norm
        self.norms = nn.ModuleList(LayerNorm2d(c, eps=eps) if norm == "ln" else nn.Identity() for c in self.channels)

    @property
    def out_channels(self) -> int:
        return sum(self.channels)

    def normalized(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """``[(N, C_i, h_i, w_i)]``: each feature of :attr:`in_features` through its norm."""
        return [norm(features[name]) for name, norm in zip(self.in_features, self.norms)]

    def concat(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[(N, C_i, h_i, w_i)] -> (N, sum C_i, h_0, w_0)`` (resized to the first grid where needed)."""
        size = xs[0].shape[-2:]
        xs = [x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
              for x in xs]
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """``{name: (N, C_i, h, w)} -> (N, sum C_i, h, w)``."""
        return self.concat(self.normalized(features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, norm={self.norm!r}"
