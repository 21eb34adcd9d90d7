"""Optimizer with layer-wise learning-rate decay for d2reg models (YACS)."""
from __future__ import annotations

from functools import partial

import torch
from detectron2.config import CfgNode
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping

from ..solver import lr_decay_rate
from .checkpoint import find_dinov2_backbone

__all__ = ["NO_WEIGHT_DECAY", "build_optimizer", "get_d2reg_optimizer_params"]

# ViTDet / DINOv2 practice: no weight decay on position embedding, CLS and register tokens.
NO_WEIGHT_DECAY = {name: {"weight_decay": 0.0} for name in ("pos_embed", "cls_token", "reg_token", "register_tokens")}


def get_d2reg_optimizer_params(model: torch.nn.Module, base_lr: float, lr_decay: float = 1.0, **kwargs):
    """detectron2's ``get_default_optimizer_params`` with the layer-wise lr factor of
    :func:`d2reg.lr_decay_rate` (``num_layers`` = the blocks the backbone keeps) and no weight decay
    on position embedding / CLS / register tokens. ``kwargs`` go to ``get_default_optimizer_params``."""
    name, backbone = find_dinov2_backbone(model)
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
        lr_decay=cfg.MODEL.D2REG.LR_DECAY,
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
