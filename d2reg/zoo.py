"""detectron2's shipped base configs, found inside the installed detectron2 without ``detectron2.model_zoo``.

``detectron2.model_zoo`` imports ``pkg_resources`` (detectron2 issue #5494), which setuptools >= 81/82 no
longer provides: ``from detectron2 import model_zoo`` then raises ``ModuleNotFoundError`` in a user's
environment. The config files themselves sit in the installed package (``detectron2/model_zoo/configs/``,
a copy or symlink of the repository's ``configs/`` that detectron2's setup.py makes for every build), so
d2reg's configs and tests resolve them here, by the same relative names ``model_zoo.get_config`` takes.
Nothing in detectron2 is patched.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from detectron2.config import LazyConfig, get_cfg

__all__ = ["detectron2_configs_dir", "get_config", "get_config_file"]


def detectron2_configs_dir() -> Path:
    """``<installed detectron2>/model_zoo/configs`` (the directory may be missing; see :func:`get_config_file`)."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("d2reg needs detectron2 (not importable in this environment).", name="detectron2")
    return Path(list(spec.submodule_search_locations)[0]) / "model_zoo" / "configs"


def get_config_file(config_path: str) -> str:
    """Path of a config shipped with detectron2, by its name relative to detectron2's ``configs/``
    (e.g. ``"common/models/mask_rcnn_vitdet.py"``), as ``detectron2.model_zoo.get_config_file``."""
    root = detectron2_configs_dir()
    path = root / config_path
    if not path.is_file():
        raise FileNotFoundError(
            f"detectron2's config {config_path!r} is not in this detectron2 install (looked for {path}). "
            "d2reg's configs build on the configs detectron2 ships in detectron2/model_zoo/configs/; an "
            "install without them (or an old detectron2 without ViTDet's common/ LazyConfigs) cannot load "
            "them. Install detectron2 from its source tree (`pip install -e .` in a detectron2 checkout "
            "links configs/ there), or copy detectron2's configs/ directory to "
            f"{root}."
        )
    return str(path)


def get_config(config_path: str):
    """A config shipped with detectron2: ``.py`` through ``LazyConfig.load`` (an OmegaConf
    ``DictConfig``), ``.yaml`` as a detectron2 ``CfgNode`` (``get_cfg()`` merged with the file). The
    untrained variant of ``detectron2.model_zoo.get_config``, without its ``pkg_resources`` import."""
    path = get_config_file(config_path)
    if path.endswith(".py"):
        return LazyConfig.load(path)
    cfg = get_cfg()
    cfg.merge_from_file(path)
    return cfg
