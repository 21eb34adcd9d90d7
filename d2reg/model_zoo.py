"""d2reg's own recipes, shipped inside the package (``d2reg/configs/``), by name — as ``detectron2.model_zoo``.

    from d2reg import model_zoo
    cfg = model_zoo.get_config("COCO/mask_rcnn_vit_b_100ep.py")      # LazyConfig (OmegaConf DictConfig)
    cfg = model_zoo.get_config("demo/mask_rcnn_vit_tiny_synth.yaml")  # YACS CfgNode with d2reg's keys
    path = model_zoo.get_config_file("ADE20k/sem_fpn_vit_b_80k.yaml")

Names are paths relative to ``d2reg/configs`` (the repository's ``configs/`` is a link to it, so a name
is also ``configs/<name>`` in a clone). :func:`resolve_config_file` is what the tools apply to
``--config-file``: an existing file wins, else a packaged name. ``d2reg.zoo`` is the other direction:
the configs *detectron2* ships, which d2reg's configs build on.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import List, Union

from detectron2.config import CfgNode, LazyConfig, get_cfg
from omegaconf import DictConfig

from .config import add_d2reg_config

__all__ = ["CONFIGS_DIR", "get_config", "get_config_file", "list_configs", "resolve_config_file"]

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
_SUFFIXES = (".py", ".yaml", ".yml")


def list_configs() -> List[str]:
    """Every packaged config name (``"COCO/mask_rcnn_vit_b_100ep.py"``, ...), sorted; LazyConfig ``.py``
    and YACS ``.yaml`` files, shared pieces (``common/...``) included."""
    return sorted(p.relative_to(CONFIGS_DIR).as_posix() for p in CONFIGS_DIR.rglob("*")
                  if p.is_file() and p.suffix in _SUFFIXES and "__pycache__" not in p.parts)


def get_config_file(name: str) -> str:
    """Path of the packaged config ``name`` (relative to ``d2reg/configs``; a leading ``configs/`` is
    accepted too). Raises ``FileNotFoundError`` naming the closest packaged names when there is none."""
    rel = name.replace("\\", "/")
    if rel.startswith("configs/"):
        rel = rel[len("configs/"):]
    path = CONFIGS_DIR / rel
    if rel and path.is_file() and path.suffix in _SUFFIXES:
        return str(path)
    names = list_configs()
    close = difflib.get_close_matches(rel, names, n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise FileNotFoundError(
        f"d2reg has no packaged config {name!r} (looked in {CONFIGS_DIR}).{hint} "
        f"d2reg.model_zoo.list_configs() lists all {len(names)}; a config of your own is passed as a file path."
    )


def resolve_config_file(name_or_path: Union[str, os.PathLike]) -> str:
    """``--config-file`` as the tools read it: an existing file path is returned as given, anything else
    is looked up as a packaged name (:func:`get_config_file`; its error names both possibilities)."""
    value = os.fspath(name_or_path)
    if os.path.isfile(value):
        return value
    try:
        return get_config_file(value)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--config-file {value!r} is neither a file nor a packaged config: {e}") from None


def get_config(name: str) -> Union[CfgNode, DictConfig]:
    """A packaged config, loaded: ``.py`` through ``LazyConfig.load`` (an OmegaConf ``DictConfig`` with
    ``model``, ``dataloader``, ``train``, ...); ``.yaml`` as a detectron2 ``CfgNode`` with d2reg's keys
    (``get_cfg()`` + :func:`d2reg.add_d2reg_config`, merged with the file and its ``_BASE_`` chain).
    YACS recipe placeholders (``MODEL.D2REG.WEIGHTS "official"``, ``DROP_PATH_RATE -1``, ...) are left
    as they are: d2reg's builders resolve them (:func:`d2reg.config.resolve_recipe`)."""
    path = get_config_file(name)
    if path.endswith(".py"):
        return LazyConfig.load(path)
    cfg = add_d2reg_config(get_cfg())
    cfg.merge_from_file(path)
    return cfg
