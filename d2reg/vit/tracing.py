"""Whether the model is being recorded into a graph (ONNX, ``torch.export``, ``torch.jit.trace``).

Recorded graphs must not bake the input size into constants: the code paths that depend on the image
size (position-embedding resize, window layout) take their exportable form while this is true.
"""
from __future__ import annotations

import torch

__all__ = ["is_exporting"]


def is_exporting() -> bool:
    """True while ``torch.onnx.export`` / ``torch.export`` / ``torch.jit.trace`` records the model."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_exporting()
