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
    "TwoStageWarmupPolyLR",
    "adamw_with_grad_clip",
    "add_gradient_clipping",
    "clip_full_model_grad_norm",
    "build_optimizer",
    "eomt_lr_decay_rate",
    "find_vit_backbone",
    "get_d2reg_optimizer_params",
    "get_eomt_optimizer_params",
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
    return add_gradient_clipping(cfg, opt)


# ----------------------------------------------------------------------------------------------- EoMT
def eomt_lr_decay_rate(name: str, lr_decay_rate: float, num_layers: int, num_query_blocks: int,
                       decay_query_blocks: bool = True, prefix: str = "backbone.vit.") -> float:
    """The official EoMT layer-wise lr factor of parameter ``name``: ``blocks.i`` -> ``decay ** (num_layers
    - 1 - i)`` (the query blocks at 1 unless ``decay_query_blocks``), the stem (tokens, patch and position
    embeddings) as block 0, the ViT's final norm and everything outside the ViT (queries, heads) 1. One step
    less than :func:`lr_decay_rate` (whose top block already decays), as tue-mps/eomt's ``configure_optimizers``."""
    if not name.startswith(prefix):
        return 1.0
    m = re.search(r"(?:^|\.)blocks\.(\d+)\.", name[len(prefix):])
    if m:
        i = int(m.group(1))
        if i >= num_layers - num_query_blocks and not decay_query_blocks:
            return 1.0
        return lr_decay_rate ** (num_layers - 1 - i)
    if name[len(prefix):].startswith("norm."):
        return 1.0
    return lr_decay_rate ** (num_layers - 1)


def get_eomt_optimizer_params(model: torch.nn.Module, base_lr: float, weight_decay: float, lr_decay: float = 0.8,
                              decay_query_blocks: bool = True, **kwargs):
    """Param groups of an :class:`d2reg.EoMT`: detectron2's ``get_default_optimizer_params`` with
    :func:`eomt_lr_decay_rate` and, as the official AdamW, weight decay on every parameter (tokens, position
    embedding and norms included; ``overrides`` can exempt some, e.g. ``d2reg.solver.NO_WEIGHT_DECAY``); every
    group carries ``"eomt_vit": True`` for the ViT's parameters (warmed up second by :class:`TwoStageWarmupPolyLR`)."""
    if not 0.0 < lr_decay <= 1.0:
        raise ValueError(f"layer-wise lr decay must be in (0, 1] (1.0: off), got {lr_decay}.")
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    depth = len(model.backbone.vit.blocks)
    factor = partial(eomt_lr_decay_rate, lr_decay_rate=lr_decay, num_layers=depth,
                     num_query_blocks=model.num_blocks, decay_query_blocks=decay_query_blocks)
    overrides = kwargs.pop("overrides", None)
    groups = get_default_optimizer_params(model, base_lr=base_lr, weight_decay=weight_decay, lr_factor_func=factor,
                                          overrides=overrides, **kwargs)
    vit = {id(p) for p in model.backbone.vit.parameters()}
    split = []  # detectron2 merges groups of equal hyper-parameters: split each into its ViT and other params
    for g in groups:
        for is_vit in (True, False):
            params = [p for p in g["params"] if (id(p) in vit) == is_vit]
            if params:
                split.append({**g, "params": params, "eomt_vit": is_vit})
    return split


def clip_full_model_grad_norm(optimizer: torch.optim.Optimizer, clip_norm: float,
                              norm_type: float = 2.0) -> torch.optim.Optimizer:
    """``optimizer`` whose ``step()`` first clips the norm of all its parameters' gradients together to
    ``clip_norm`` (Lightning's ``gradient_clip_val``, Mask2Former's ``"full_model"``; detectron2's own
    ``"norm"`` clips each parameter separately). Under AMP, detectron2's ``AMPTrainer`` unscales the
    gradients before ``step()``. Returns the same object, its class swapped as detectron2 does."""
    base = type(optimizer)

    class FullModelGradClip(base):
        def step(self, closure=None):
            params = [p for g in self.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip_norm, norm_type)
            return super().step(closure)

    FullModelGradClip.__name__ = f"{base.__name__}WithFullModelGradClip"
    optimizer.__class__ = FullModelGradClip
    return optimizer


def add_gradient_clipping(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``SOLVER.CLIP_GRADIENTS``: detectron2's ``"value"`` / ``"norm"`` (per parameter), or ``"full_model"``
    (one norm over all parameters: :func:`clip_full_model_grad_norm`)."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        return clip_full_model_grad_norm(optimizer, clip.CLIP_VALUE, clip.NORM_TYPE)
    return maybe_add_gradient_clipping(cfg, optimizer)


def adamw_with_grad_clip(params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.05,
                         clip_norm: float = 0.01, norm_type: float = 2.0) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` with the full-model gradient norm clipped to ``clip_norm`` before each step
    (0.01 in EoMT's recipe; ``<= 0``: no clipping) -- for LazyConfigs, which have no clipping key."""
    opt = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    return clip_full_model_grad_norm(opt, clip_norm, norm_type) if clip_norm > 0 else opt


class TwoStageWarmupPolyLR(torch.optim.lr_scheduler.LRScheduler):
    """EoMT's schedule per param group: the heads (groups without ``"eomt_vit"``) warm up linearly over
    ``warmup_iters[0]`` and then decay as ``(1 - t) ** power``; the ViT stays at 0 during the heads' warm-up,
    warms up over the next ``warmup_iters[1]`` iterations and then decays the same way to ``max_iter``."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iter: int, warmup_iters=(500, 1000), power: float = 0.9,
                 last_epoch: int = -1):
        if len(warmup_iters) != 2 or min(warmup_iters) < 0:
            raise ValueError(f"warmup_iters must be two iteration counts (heads, ViT), got {warmup_iters}.")
        self.max_iter, self.warmup_iters, self.power = int(max_iter), tuple(int(w) for w in warmup_iters), power
        super().__init__(optimizer, last_epoch)

    def _factor(self, step: int, vit: bool) -> float:
        heads, vit_warmup = self.warmup_iters
        begin, length = (heads, vit_warmup) if vit else (0, heads)
        if step < begin:
            return 0.0
        if length > 0 and step < begin + length:
            return (step - begin) / length
        span = max(1, self.max_iter - begin - length)
        return max(0.0, 1 - (step - begin - length) / span) ** self.power

    def get_lr(self):
        return [base * self._factor(self.last_epoch, g.get("eomt_vit", False))
                for base, g in zip(self.base_lrs, self.optimizer.param_groups)]
