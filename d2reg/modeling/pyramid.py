"""detectron2's ViTDet ``SimpleFeaturePyramid`` with its padding contract fixed, and its multi-layer
version (several ViT blocks in, the same levels out); ``build_d2reg_sfp_backbone`` builds either."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone import vit as d2_vit
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from ..vit import resolve_block_indices
from .families import vit_backbone_from_config
from .multilayer import MultiLayerReader, arch_spec, default_in_blocks

__all__ = ["BLOCK_NORMS", "MULTILAYER_MODES", "MultiLayerFeaturePyramid", "SimpleFeaturePyramid",
           "build_d2reg_sfp_backbone"]

MULTILAYER_MODES = ("concat", "per_level")
BLOCK_NORMS = ("ln", "final", "none")


class SimpleFeaturePyramid(d2_vit.SimpleFeaturePyramid):
    """detectron2's ``SimpleFeaturePyramid`` (same arguments, same weights and outputs) with:

    - ``padding_constraints`` under the key ``"size_divisibility"``: upstream returns the misspelt
      ``"size_divisiblity"`` and never sets ``size_divisibility``, so ``ImageList`` pads nothing
      unless ``square_pad > 0`` and odd-sized images break the 0.5x level / top block alignment.
    - a clear error when the input stride cannot make a power-of-two pyramid (patch 14).
    - ``LastLevelMaxPool`` pools the coarsest level whatever its name (upstream reads "p5" only, so
      e.g. patch 8 with scale factors (2, 1, 0.5), levels p2-p4, failed with an IndexError).
    - ``from_config`` for YACS (``MODEL.D2REG.*``), so one class serves kwargs, YACS and LazyCall.
    """

    @configurable
    def __init__(self, net, in_feature: str, out_channels: int, scale_factors: Sequence[float],
                 top_block=None, norm: str = "LN", square_pad: int = 0):
        stride = net.output_shape()[in_feature].stride
        strides = [stride / s for s in scale_factors]
        if len(scale_factors) > 1 and not all(s.is_integer() and math.log2(s).is_integer() for s in strides):
            raise ValueError(
                f"SimpleFeaturePyramid needs power-of-two strides, but input stride {stride} with scale "
                f"factors {tuple(scale_factors)} gives {strides}. With a DINOv2 patch-14 checkpoint use "
                "patch_size=16 (the kernel is resampled, MODEL.D2REG.PATCH_SIZE 16), or scale_factors=(1.0,)."
            )
        levels = [f"p{int(math.log2(s))}" for s in strides]
        if isinstance(top_block, LastLevelMaxPool):
            top_block.in_feature = levels[-1]  # upstream hard-codes "p5"; it pools the coarsest level
        elif top_block is not None and getattr(top_block, "in_feature", levels[-1]) not in levels:
            raise ValueError(f"top_block reads {top_block.in_feature!r}, but the pyramid's levels are {levels}.")
        super().__init__(net, in_feature, out_channels, list(scale_factors), top_block, norm, square_pad)

    @classmethod
    def from_config(cls, cfg) -> dict:
        c = cfg.MODEL.D2REG.SFP
        return dict(
            net=vit_backbone_from_config(cfg),
            in_feature="last_feat",
            out_channels=c.OUT_CHANNELS,
            scale_factors=tuple(c.SCALE_FACTORS),
            top_block=LastLevelMaxPool() if c.TOP_BLOCK else None,
            norm=c.NORM,
            square_pad=c.SQUARE_PAD,
        )

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}


class _Shapes(Backbone):
    """Only ``output_shape()``: what upstream's constructor reads from ``net`` to size the stages."""

    def __init__(self, shapes: Dict[str, ShapeSpec]):
        super().__init__()
        self._shapes = shapes

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return self._shapes

    def forward(self, x):
        raise RuntimeError("a shape view only; MultiLayerFeaturePyramid replaces it by its backbone")


class MultiLayerFeaturePyramid(SimpleFeaturePyramid):
    """:class:`SimpleFeaturePyramid` (same levels p2-p6, strides, channels, padding constraints and
    stage layers) fed by several blocks of the backbone instead of one.

    ``net`` returns the blocks (a family backbone with ``out_indices=(a, b, c, d)`` gives
    ``block{a}, block{b}, block{c}, last_feat``, each (N, C, H/16, W/16)); ``in_features`` (default:
    all of them, in order) are read by a :class:`MultiLayerReader`, then by ``mode``:

    - ``"concat"`` (the DINOv3 protocol): the normalised blocks concatenated along channels, one
      (N, k*C, H/16, W/16) map, into every scale branch (4, 2, 1, 0.5 -> p2-p5; p6 by the top block);
    - ``"per_level"`` (RF-DETR / ViT-Adapter style): one block per scale branch, shallow blocks for
      the fine levels: the first feature -> p2, ..., the last -> p5 (as many features as
      ``scale_factors``).

    ``block_norm``: ``"ln"`` a learnable LayerNorm per block on the raw blocks (``net`` built with
    ``final_norm=False``); ``"final"`` the backbone's own final norm, which timm applies to every
    block it returns (``net`` built with ``final_norm=True``); ``"none"`` raw blocks.
    The reader's concatenated map, before the pyramid: ``pyramid.reader(pyramid.net(x))``.

    ``project=True`` ("concat" only): a 1x1 convolution + ``norm`` from the k*C concatenation down to
    the block width C before the branches, which then have the single-block pyramid's size (the
    branches on k*C channels grow as (k*C)^2: ~1.2B parameters for the 7B's 4 x 4096).
    """

    @configurable
    def __init__(self, net, out_channels: int = 256, scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5), *,
                 mode: str = "concat", in_features: Optional[Sequence[str]] = None, block_norm: str = "ln",
                 top_block=None, norm: str = "LN", square_pad: int = 0, project: bool = False):
        """
        Args:
            net: a backbone returning several features of one stride (a d2reg family backbone).
            out_channels, scale_factors, top_block, norm, square_pad: as :class:`SimpleFeaturePyramid`.
            mode: "concat" or "per_level".
            in_features: the backbone features to read; None: all of ``net.output_shape()``.
            block_norm: "ln", "final" or "none".
            project: project the concatenation to the block width first.
        """
        shapes = net.output_shape()
        names = list(in_features) if in_features else list(shapes)
        _check_multilayer(net, names, shapes, mode, block_norm, scale_factors)
        if project and mode != "concat":
            raise ValueError(f"project=True (MODEL.D2REG.SFP.PROJECT) narrows the 'concat' map; mode {mode!r} has "
                             "one block per branch: leave project False.")
        reader = MultiLayerReader(names, [shapes[n].channels for n in names],
                                  norm="ln" if block_norm == "ln" else "none")
        channels = reader.out_channels if mode == "concat" and not project else reader.channels[0]
        view = _Shapes({"multilayer": ShapeSpec(channels=channels, stride=shapes[names[0]].stride)})
        super().__init__(view, "multilayer", out_channels, scale_factors, top_block, norm, square_pad)
        self.net = net  # replaces the shape view
        self.reader = reader
        self.proj = Conv2d(reader.out_channels, channels, kernel_size=1, bias=not norm,
                           norm=get_norm(norm, channels)) if project else None
        self.mode, self.block_norm, self.in_features = mode, block_norm, names

    @classmethod
    def from_config(cls, cfg) -> dict:
        args = super().from_config(multilayer_backbone_cfg(cfg))
        del args["in_feature"]  # all the blocks the backbone returns
        c = cfg.MODEL.D2REG.SFP
        return dict(args, mode=c.MULTILAYER_MODE, block_norm=c.BLOCK_NORM, project=c.PROJECT)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(N, 3, H, W) -> {"p2": (N, out_channels, H/4, W/4), ..., "p6": (N, out_channels, H/64, W/64)}."""
        blocks = self.reader.normalized(self.net(x))
        if self.mode == "concat":
            x = self.reader.concat(blocks)
            inputs = [x if self.proj is None else self.proj(x)] * len(self.stages)
        else:
            inputs = blocks
        results = [stage(f) for stage, f in zip(self.stages, inputs)]
        if self.top_block is not None:
            results.extend(self.top_block(results[self._out_features.index(self.top_block.in_feature)]))
        return dict(zip(self._out_features, results))


def _check_multilayer(net, names, shapes, mode, block_norm, scale_factors) -> None:
    if mode not in MULTILAYER_MODES:
        raise ValueError(f"MultiLayerFeaturePyramid mode must be one of {MULTILAYER_MODES} "
                         f"(MODEL.D2REG.SFP.MULTILAYER_MODE), got {mode!r}.")
    if block_norm not in BLOCK_NORMS:
        raise ValueError(f"block_norm must be one of {BLOCK_NORMS} (MODEL.D2REG.SFP.BLOCK_NORM), got {block_norm!r}.")
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ValueError(f"MultiLayerFeaturePyramid reads {missing}, but the backbone returns {list(shapes)}: "
                         "add those blocks to its out_indices.")
    if len({shapes[n].stride for n in names}) != 1:
        raise ValueError(f"MultiLayerFeaturePyramid needs features of one stride, got "
                         f"{ {n: shapes[n].stride for n in names} }.")
    if mode == "per_level" and len(names) != len(scale_factors):
        raise ValueError(f"mode 'per_level' feeds one block to each of the {len(scale_factors)} scale factors "
                         f"{tuple(scale_factors)}, but reads {len(names)} features {names}: give the backbone "
                         f"{len(scale_factors)} out_indices (MODEL.D2REG.SFP.IN_BLOCKS).")
    if mode == "per_level" and len({shapes[n].channels for n in names}) != 1:
        raise ValueError(f"mode 'per_level' needs features of one width, got "
                         f"{ {n: shapes[n].channels for n in names} }.")
    final = getattr(net, "final_norm", None)
    if block_norm == "final" and not final:
        raise ValueError("block_norm 'final' uses the backbone's final norm, but it was built without it: "
                         "final_norm=True (MODEL.D2REG.FINAL_NORM True), or block_norm 'ln'.")
    if block_norm == "ln" and final:
        raise ValueError("block_norm 'ln' normalises the raw blocks, but the backbone already applies its final "
                         "norm (final_norm=True): use block_norm 'final', or build it with final_norm=False.")


def multilayer_backbone_cfg(cfg):
    """``cfg`` with ``MODEL.D2REG.OUT_INDICES`` set to the blocks the multi-layer pyramid reads:
    ``MODEL.D2REG.SFP.IN_BLOCKS``, or when empty :func:`default_in_blocks` of the ViT's depth (4 blocks;
    ``per_level``: one per scale factor). ``OUT_INDICES`` must stay at its default ``[-1]`` (or name
    the same blocks): the pyramid, not the backbone, chooses them in YACS."""
    c = cfg.MODEL.D2REG
    family = c.get("FAMILY", "dinov2")
    depth = arch_spec(c.ARCH, family, depth=c.DEPTH or None).depth
    n = len(c.SFP.SCALE_FACTORS) if c.SFP.MULTILAYER_MODE == "per_level" else 4
    blocks = (resolve_block_indices(list(c.SFP.IN_BLOCKS), depth, "MODEL.D2REG.SFP.IN_BLOCKS") if c.SFP.IN_BLOCKS
              else list(default_in_blocks(c.ARCH, family, depth, n)))
    if list(c.OUT_INDICES) != [-1] and resolve_block_indices(list(c.OUT_INDICES), depth) != blocks:
        raise ValueError(f"MODEL.D2REG.OUT_INDICES {list(c.OUT_INDICES)} disagrees with the multi-layer pyramid's "
                         f"blocks {blocks}: set MODEL.D2REG.SFP.IN_BLOCKS and leave OUT_INDICES at [-1].")
    out = cfg.clone()
    out.defrost()
    out.MODEL.D2REG.OUT_INDICES = blocks
    return out


@BACKBONE_REGISTRY.register()
def build_d2reg_sfp_backbone(cfg, input_shape: ShapeSpec) -> SimpleFeaturePyramid:
    """``MODEL.BACKBONE.NAME: "build_d2reg_sfp_backbone"``: the d2reg ViT (``MODEL.D2REG.*``) inside
    a simple feature pyramid (p2-p6 with the default ``MODEL.D2REG.SFP.*``); with
    ``MODEL.D2REG.SFP.MULTILAYER_MODE`` "concat" or "per_level", the :class:`MultiLayerFeaturePyramid`
    over the blocks ``MODEL.D2REG.SFP.IN_BLOCKS`` (default: evenly spaced)."""
    if input_shape.channels != 3:
        raise ValueError(f"d2reg ViT backbones take 3-channel images; MODEL.PIXEL_MEAN has {input_shape.channels}.")
    if cfg.MODEL.D2REG.SFP.get("MULTILAYER_MODE", ""):
        return MultiLayerFeaturePyramid(cfg)
    return SimpleFeaturePyramid(cfg)
