"""The DINOv2 linear semantic-segmentation protocol for detectron2's ``SemanticSegmentor``.

detectron2 has the meta-architecture (``SemanticSegmentor``), the evaluator (``SemSegEvaluator``) and
a pyramid head (``SemSegFPNHead``), but no head for the papers' linear probe on frozen ViT features:
BatchNorm + a 1x1 convolution on the patch tokens of the last block (or of the last 4 blocks,
concatenated), upsampled bilinearly to the image. :class:`LinearSemSegHead` is that head, and
``build_d2reg_vit_backbone`` gives YACS the bare :class:`DINOv2Backbone` (no pyramid) to put under it.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..vit import resolve_block_indices
from .families import vit_backbone_from_config
from .multilayer import MultiLayerReader, arch_spec

__all__ = ["LinearSemSegHead", "build_d2reg_vit_backbone", "vit_feature_shapes"]


@SEM_SEG_HEADS_REGISTRY.register()
class LinearSemSegHead(nn.Module):
    """Linear probe: ``concat(features) -> norm -> dropout -> 1x1 conv -> bilinear upsampling``.

    The features named in ``in_features`` (default: every feature the backbone returns, in its
    order, e.g. ``block8, block9, block10, last_feat`` for ``out_indices=(-4, -3, -2, -1)`` of a
    12-block ViT) are resized to the first one's grid when they differ and concatenated along
    channels by the multi-layer pyramid's reader (:class:`d2reg.MultiLayerReader`, ``norm="none"``:
    the protocol's features come normalised by the ViT's final norm). The logits (stride ``stride``
    of the first feature) are upsampled bilinearly to the padded image for the loss (cross entropy,
    ``ignore_value`` ignored) and for inference, where
    ``SemanticSegmentor`` crops the padding and resizes to the requested output size.

    The DINOv2 protocol uses ``norm="SyncBN"`` (batch statistics over all GPUs; on one process it is
    plain BatchNorm) on frozen features (``DINOv2Backbone(freeze_at="all")``).

    Works as ``SEM_SEG_HEAD.NAME: "LinearSemSegHead"`` (YACS; ``SEM_SEG_HEAD.IN_FEATURES: []`` takes
    all backbone features) and as ``L(LinearSemSegHead)(input_shape=..., num_classes=150)``.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        in_features: Optional[Sequence[str]] = None,
        norm: str = "BN",
        dropout: float = 0.0,
        ignore_value: int = 255,
        loss_weight: float = 1.0,
    ):
        """
        Args:
            input_shape: the backbone's ``output_shape()``.
            num_classes: number of classes (150 for ADE20k).
            in_features: features to concatenate; None or empty: all of ``input_shape``.
            norm: detectron2 norm name ("BN", "SyncBN", "" for none) applied to the concatenation.
            dropout: dropout before the classifier (0 in the DINOv2 protocol).
            ignore_value: label ignored by the loss (255, as detectron2's ADE20k masks use).
            loss_weight: multiplier of the cross-entropy loss.
        """
        super().__init__()
        names = list(in_features) if in_features else list(input_shape)
        missing = [n for n in names if n not in input_shape]
        if missing:
            raise ValueError(f"LinearSemSegHead: features {missing} not in the backbone's outputs {list(input_shape)}.")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.in_features: List[str] = names
        self.stride = input_shape[names[0]].stride
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.num_classes = num_classes
        self.reader = MultiLayerReader(names, [input_shape[n].channels for n in names], norm="none")
        channels = self.in_channels = self.reader.out_channels
        self.norm = get_norm(norm, channels) if norm else nn.Identity()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.predictor = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        c = cfg.MODEL.SEM_SEG_HEAD
        in_features = list(c.IN_FEATURES)
        if in_features == ["p2", "p3", "p4", "p5"] and "p2" not in input_shape:
            in_features = []  # detectron2's default (made for FPN backbones): take all features
        return dict(
            input_shape=input_shape,
            num_classes=c.NUM_CLASSES,
            in_features=in_features,
            norm=c.NORM,
            dropout=getattr(c, "DROPOUT", 0.0),
            ignore_value=c.IGNORE_VALUE,
            loss_weight=c.LOSS_WEIGHT,
        )

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone features -> logits at the features' stride, (N, num_classes, h, w)."""
        return self.predictor(self.dropout(self.norm(self.reader(features))))

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        """Training: ``(None, {"loss_sem_seg": ...})``; inference: ``(logits at stride 1, {})``."""
        logits = self.layers(features)
        if self.training:
            if targets is None:
                raise ValueError("LinearSemSegHead needs sem_seg targets in training mode.")
            return None, self.losses(logits, targets)
        return F.interpolate(logits, scale_factor=self.stride, mode="bilinear", align_corners=False), {}

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = F.interpolate(logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, targets.long(), reduction="mean", ignore_index=self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}


@BACKBONE_REGISTRY.register()
def build_d2reg_vit_backbone(cfg, input_shape: ShapeSpec):
    """``MODEL.BACKBONE.NAME: "build_d2reg_vit_backbone"``: the bare :class:`DINOv2Backbone` (no
    pyramid), configured by ``MODEL.D2REG.*``; outputs ``block{i}`` + ``last_feat`` at the patch
    stride. For the linear protocol: ``MODEL.D2REG.FREEZE_AT: -1`` (frozen),
    ``MODEL.D2REG.OUT_INDICES: [-1]`` or ``[-4, -3, -2, -1]``."""
    if input_shape.channels != 3:
        raise ValueError(f"DINOv2 backbones take 3-channel images; MODEL.PIXEL_MEAN has {input_shape.channels}.")
    return vit_backbone_from_config(cfg)


def vit_feature_shapes(
    arch: str = "vit_small",
    out_indices: Sequence[int] = (-1,),
    patch_size: int = 16,
    embed_dim: Optional[int] = None,
    depth: Optional[int] = None,
    num_heads: Optional[int] = None,
    family: str = "dinov2",
) -> Dict[str, ShapeSpec]:
    """What the bare family backbone's ``output_shape()`` returns (``DINOv2Backbone(arch, out_indices=...,
    patch_size=..., embed_dim=..., depth=...)``, or ``DINOv3Backbone`` for ``family="dinov3"``, patch 16),
    without building it: the ``input_shape`` of a head in a LazyConfig, e.g.
    ``L(LinearSemSegHead)(input_shape=L(vit_feature_shapes)(arch="${..backbone.arch}", ...))``."""
    spec = arch_spec(arch, family, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    take = resolve_block_indices(list(out_indices), spec.depth)
    names = [f"block{i}" for i in take[:-1]] + ["last_feat"]
    return {n: ShapeSpec(channels=spec.embed_dim, stride=patch_size) for n in names}
