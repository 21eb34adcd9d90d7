"""Optional dependencies (setup extras): imported only by the features that use them.

``import d2reg`` and every model, config and tool work without them; a feature whose extra is missing
fails at its first use with :class:`MissingExtraError`, naming the feature, the package and the install
command (issue 23: a module-level ``import peft`` once made ``import d2reg`` fail for everyone without
``[lora]``).
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "is_imported", "require"]

# importable module -> the extra that installs it (setup extras in pyproject.toml)
EXTRAS = {
    "peft": "lora",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "transformers": "hf",
}


class MissingExtraError(ImportError):
    """A feature needs an optional dependency that is not installed."""


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise :class:`MissingExtraError` naming the extra to install,
    e.g. ``lora=... needs peft: pip install -e ".[lora]"`` (from a clone) / ``pip install "d2reg[lora]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, "test")
        raise MissingExtraError(
            f"{feature} needs {top}, which is not importable here ({e}): pip install -e \".[{extra}]\" "
            f"in a d2reg clone, or pip install \"d2reg[{extra}]\" (or pip install {top}).",
            name=top,
        ) from e


def is_imported(module: str) -> bool:
    """True once ``module`` has been imported in this process (no import is attempted)."""
    return module in sys.modules
