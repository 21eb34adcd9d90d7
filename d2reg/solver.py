"""Optimizer set-up for d2reg models: layer-wise lr decay, the one no-weight-decay list, param groups.

Used by YACS training (:func:`build_optimizer`, through ``D2RegTrainer.build_optimizer``) and by
LazyConfigs (``optimizer.params._target_ = get_d2reg_optimizer_params`` or
``lr_factor_func=partial(lr_decay_rate, ...)``).
"""
from __future__ import annotations

import re
from functools import partial
from typing import Iterator, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping

from .config import resolve_recipe

__all__ = [
    "NO_WEIGHT_DECAY",
    "NO_WEIGHT_DECAY_NAMES",
    "build_optimizer",
    "find_vit_backbone",
    "get_d2reg_optimizer_params",
    "lr_decay_rate",
    "vit_backbones",
]

# Parameters that belong to layer 0 for lr decay: the prefix tokens (CLS, registers / DINOv3 storage
# tokens, the unused mask token), position and patch embeddings.
_STEM = ("cls_token", "reg_token", "register_tokens", "storage_tokens", "pos_embed", "patch_embed", "mask_token")

# ViTDet / DINOv2 practice: no weight decay on the position embedding and the prefix tokens (leaf
# parameter names, as detectron2's ``get_default_optimizer_params(overrides=...)`` matches them).
NO_WEIGHT_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "register_tokens", "storage_tokens")
NO_WEIGHT_DECAY = {name: {"weight_decay": 0.0} for name in NO_WEIGHT_DECAY_NAMES}


def lr_decay_rate(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12, prefix: str = "backbone") -> float:
    """lr multiplier ``decay ** (num_layers + 1 - layer_id)`` for parameter ``name``.

    Layer ids: CLS/register/storage tokens, position and patch embeddings 0; ``blocks.i`` i + 1;
    everything else in the backbone (pyramid, final norm) ``num_layers + 1`` (multiplier 1).
    Parameters outside ``prefix`` (the heads) get 1. Unlike detectron2's ``get_vit_lr_decay_rate``,
    which leaves ``cls_token``/``reg_token`` at the top rate, the tokens decay with the embeddings.
    """
    if not name.startswith(prefix):
        return 1.0
    layer_id = num_layers + 1
    leaf = name.rsplit(".", 1)[-1]
    if leaf in _STEM or any(f".{s}." in name for s in ("patch_embed", "pos_embed")):
        layer_id = 0
    else:
        m = re.search(r"\.blocks\.(\d+)\.", name)
        if m:
            layer_id = int(m.group(1)) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)


def vit_backbones(model: torch.nn.Module) -> Iterator[Tuple[str, torch.nn.Module]]:
    """(name, module) of every d2reg ViT backbone inside ``model`` (DDP unwrapped), in module order.
    The name is "" for the backbone itself, e.g. "backbone.net" in a Mask R-CNN. A d2reg ViT backbone
    is recognised by its ``checkpoint_family`` attribute (every family has one) and its ``vit``."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    for name, m in model.named_modules():
        if getattr(m, "checkpoint_family", None) and hasattr(m, "vit"):
            yield name, m


def find_vit_backbone(model: torch.nn.Module) -> Tuple[Optional[str], Optional[torch.nn.Module]]:
    """(name, module) of the first d2reg ViT backbone inside ``model`` (:func:`vit_backbones`), or
    (None, None)."""
    return next(vit_backbones(model), (None, None))


def get_d2reg_optimizer_params(model: torch.nn.Module, base_lr: float, lr_decay: float = 1.0, **kwargs):
    """detectron2's ``get_default_optimizer_params`` with the layer-wise lr factor of
    :func:`lr_decay_rate` (``num_layers`` = the blocks the backbone keeps) and no weight decay on
    :data:`NO_WEIGHT_DECAY_NAMES`. ``kwargs`` go to ``get_default_optimizer_params``."""
    if not 0.0 < lr_decay <= 1.0:
        raise ValueError(f"layer-wise lr decay must be in (0, 1] (1.0: off), got {lr_decay}.")
    name, backbone = find_vit_backbone(model)
    lr_factor_func = None
    if backbone is not None and lr_decay != 1.0:
        prefix = name.split(".")[0] if name else ""
        lr_factor_func = partial(lr_decay_rate, lr_decay_rate=lr_decay, num_layers=backbone.num_layers, prefix=prefix)
    overrides = {**NO_WEIGHT_DECAY, **kwargs.pop("overrides", {})}
    return get_default_optimizer_params(
        model, base_lr=base_lr, lr_factor_func=lr_factor_func, overrides=overrides, **kwargs
    )


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``cfg.SOLVER.OPTIMIZER`` "SGD" (detectron2's default) or "ADAMW", with layer-wise lr decay
    ``cfg.MODEL.D2REG.LR_DECAY`` and ``SOLVER.CLIP_GRADIENTS``."""
    params = get_d2reg_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        lr_decay=resolve_recipe(cfg).MODEL.D2REG.LR_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        opt = torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                              nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    elif name == "ADAMW":
        opt = torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS),
                                weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'ADAMW', got {cfg.SOLVER.OPTIMIZER!r}.")
    return maybe_add_gradient_clipping(cfg, opt)
