"""Helpers for using d2reg backbones in detrex (IDEA-Research/detrex) LazyConfigs.

detrex is not on PyPI, so nothing here imports it: :func:`load_detrex_config` finds a detrex
checkout only when a config calls it. The configs live in ``configs/detrex/``.
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Dict, Optional

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec

__all__ = ["backbone_output_shape", "detrex_root", "load_detrex_config", "match_neck_to_backbone"]


def backbone_output_shape(backbone_cfg) -> Dict[str, ShapeSpec]:
    """``output_shape()`` of the backbone a LazyCall config describes, e.g.
    ``{"p3": ShapeSpec(channels=256, stride=8), ...}`` for a 4-scale simple feature pyramid.

    The backbone is built on the ``meta`` device without its ``weights`` (no memory, no file read,
    ~0.3 s for ViT-L), so the answer comes from the real classes rather than repeated numbers.
    """
    cfg = copy.deepcopy(backbone_cfg)
    net = cfg.get("net", cfg)
    if "weights" in net:
        net.weights = None
    with torch.device("meta"):
        model = instantiate(cfg)
    return dict(model.output_shape())


def match_neck_to_backbone(model):
    """Point a detrex DINO-style model config's neck and transformer at ``model.backbone``'s outputs.

    Sets ``model.neck.input_shapes`` (channels and strides of every backbone output, in stride
    order), ``model.neck.in_features``, ``model.neck.num_outs`` and
    ``model.transformer.num_feature_levels`` (one level per backbone output: detrex's
    ``ChannelMapper`` asserts it gets as many inputs as it has convs). Call it again after changing
    the pyramid (``scale_factors``, ``top_block``, ``out_channels``) in a config file; a
    command-line override of those keys does not re-run it. Returns ``model``.
    """
    shapes = backbone_output_shape(model.backbone)
    names = sorted(shapes, key=lambda k: shapes[k].stride)
    model.neck.input_shapes = {k: ShapeSpec(channels=shapes[k].channels, stride=shapes[k].stride) for k in names}
    model.neck.in_features = names
    model.neck.num_outs = len(names)
    model.transformer.num_feature_levels = len(names)
    return model


def detrex_root(root: Optional[str] = None) -> Path:
    """The detrex checkout: ``root``, else ``$DETREX_ROOT``, else the checkout the importable
    ``detrex`` package lives in (``pip install -e .`` in detrex), else the working directory.
    Its ``projects/`` (detrex's DINO code and model configs) is not part of the ``detrex`` package."""
    candidates = [root, os.environ.get("DETREX_ROOT")]
    try:
        import detrex

        candidates.append(Path(detrex.__file__).resolve().parent.parent)
    except ImportError:
        pass
    candidates.append(os.getcwd())
    for c in candidates:
        if c and (Path(c) / "projects" / "dino").is_dir():
            return Path(c).resolve()
    raise FileNotFoundError(
        "no detrex checkout found (looked for projects/dino in: "
        + ", ".join(str(c) for c in candidates if c)
        + "). d2reg's detrex configs run inside a detrex checkout: `cd detrex && python tools/train_net.py "
        "--config-file ...`, or set DETREX_ROOT=/path/to/detrex."
    )


def load_detrex_config(relpath: str, root: Optional[str] = None):
    """``LazyConfig.load`` a config file of a detrex checkout by its path inside the checkout, e.g.
    ``load_detrex_config("projects/dino/configs/models/dino_r50.py").model``.

    detrex's ``get_config`` only reaches ``configs/common``; the DINO model configs sit in
    ``projects/`` and import ``projects.dino.modeling``, so the checkout is appended to
    ``sys.path`` when missing (detrex's ``tools/train_net.py`` does the same).
    """
    top = detrex_root(root)
    if str(top) not in sys.path:
        sys.path.append(str(top))
    path = top / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{relpath} not found in the detrex checkout {top}.")
    return LazyConfig.load(str(path))
