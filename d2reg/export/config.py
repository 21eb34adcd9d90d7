"""The model of a training config, with its weights loaded as training loads them (for the export tool)."""
from __future__ import annotations

from typing import Sequence

import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from torch import nn

from ..config import add_d2reg_config, resolve_recipe
from ..engine.checkpointer import D2RegCheckpointer

__all__ = ["model_from_config"]


def model_from_config(config_file: str, opts: Sequence[str] = ()) -> nn.Module:
    """Build the model of ``config_file`` on the CPU, in eval mode: a YACS ``.yaml`` (``opts`` as
    ``KEY VALUE`` pairs; ``MODEL.WEIGHTS`` loaded) or a LazyConfig ``.py`` (``opts`` as ``key=value``;
    ``train.init_checkpoint`` loaded). Backbone weights (``MODEL.D2REG.WEIGHTS`` / ``net.weights``) load
    at construction, as in training; any checkpoint goes through :class:`d2reg.engine.D2RegCheckpointer`
    (a file matching none of the model's weights is an error)."""
    if config_file.endswith(".py"):
        cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(opts))
        if "train" in cfg and "device" in cfg.train:
            cfg.train.device = "cpu"
        model = instantiate(cfg.model)
        weights = cfg.train.get("init_checkpoint", "") if "train" in cfg else ""
    elif config_file.endswith((".yaml", ".yml")):
        cfg = get_cfg()
        add_d2reg_config(cfg)
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
        cfg.MODEL.DEVICE = "cpu"
        cfg = resolve_recipe(cfg)
        model = build_model(cfg)
        weights = cfg.MODEL.WEIGHTS
    else:
        raise ValueError(f"--config-file {config_file!r}: expected a YACS .yaml or a LazyConfig .py file.")
    model.to(torch.device("cpu"))
    if weights:
        D2RegCheckpointer(model).load(weights)
    return model.eval()
