"""Shared LazyConfig pieces of the multi-layer / frozen recipes (d2reg.MultiLayerFeaturePyramid).

:func:`multilayer` turns a simple-pyramid node (``sfp(...)`` of d2reg_vit.py) into the multi-layer
pyramid over the same backbone, keeping its channels, levels and padding; the blocks it reads are the
backbone's ``out_indices``, by default the DINOv3 rule ``m * depth / 4 - 1`` of the backbone's own
``arch`` / ``depth`` and family (``d2reg.modeling.multilayer.default_in_blocks``), so a size or family
override of the backbone moves them too (ViT-L: 5, 11, 17, 23; ViT-g / 7B: 9, 19, 29, 39).
:func:`frozen` freezes the whole ViT (``freeze_at="all"``): only the pyramid and the heads train.

    model.backbone = multilayer(frozen(model.backbone))      # what the *_frozen_* configs do
    model.backbone.net.out_indices = (3, 7, 11, 15)          # other blocks (ViT-L)
    model.backbone.mode = "per_level"                        # one block per level instead of concat
"""
from detectron2.config import LazyCall as L

from d2reg import MultiLayerFeaturePyramid
from d2reg.modeling.multilayer import default_in_blocks

from .d2reg_vit import family_of


def frozen(backbone):
    """The ViT inside the pyramid node ``backbone`` frozen entirely; returns ``backbone``."""
    backbone.net.freeze_at = "all"
    return backbone


def multilayer(backbone, mode: str = "concat", block_norm: str = "ln"):
    """The ``L(SimpleFeaturePyramid)`` node ``backbone`` as ``L(MultiLayerFeaturePyramid)`` (same net,
    channels, scale factors, top block, norm, square padding) reading the evenly spaced blocks of
    its net; ``block_norm="final"`` also turns on the net's final norm."""
    net = backbone.net
    if "depth" not in net:
        net.depth = None  # the arch's depth (the tests shrink it)
    net.out_indices = L(default_in_blocks)(arch="${..arch}", depth="${..depth}",
                                           family=family_of("${..._target_}"))
    if block_norm == "final":
        net.final_norm = True
    args = {k: v for k, v in backbone.items() if k not in ("_target_", "in_feature")}
    return L(MultiLayerFeaturePyramid)(**args, mode=mode, block_norm=block_norm)
