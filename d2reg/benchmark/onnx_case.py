"""The benchmark's onnxruntime cases: a backbone exported by :mod:`d2reg.export` and run on the CPU."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import List

import numpy as np
import torch
from torch import nn

from ..export import export_backbone, ort_session

__all__ = ["OnnxRuntimeBackbone", "onnxruntime_available"]


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxRuntimeBackbone(nn.Module):
    """``backbone`` exported to ONNX as a user deploys it (dynamic N, H, W; opset 23, fused attention)
    into a temporary folder, and run by an onnxruntime CPU session (its default threads: one per core).

    ``forward((N, 3, H, W) tensor)`` -> the graph's outputs as numpy arrays (``p2`` ... ``p6``). Holds no
    parameters, so it is forward-only: no training step, no FLOP count."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        folder = tempfile.mkdtemp(prefix="d2reg-ort-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        self.path = export_backbone(backbone.eval(), os.path.join(folder, "backbone.onnx")).path
        self.session = ort_session(self.path)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> List[np.ndarray]:
        return self.session.run(None, {self.input_name: x.detach().cpu().numpy()})
