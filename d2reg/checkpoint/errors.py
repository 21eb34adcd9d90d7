"""What every stage of the checkpoint pipeline shares: the error type and the checkpoint facts."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import torch

__all__ = ["CheckpointError", "CheckpointInfo", "StateDict", "short_list"]

StateDict = Dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the problem and the fix."""


@dataclass
class CheckpointInfo:
    """What a checkpoint holds, read from its tensor shapes (never from its file name)."""

    family: str  # "dinov2" | "dinov3"
    format: str  # the layout on disk: "official" | "timm" | "hf" | "detectron2"
    arch: Optional[str]  # the family's arch name when the shapes are a standard model, else None
    embed_dim: int
    depth: int
    num_heads: int  # the table's value for a standard width, else head dim 64
    patch_size: int
    num_register_tokens: int  # DINOv2 registers / DINOv3 storage tokens
    swiglu: bool
    has_final_norm: bool
    pos_grid: Optional[int] = None  # side of the stored position-embedding grid (DINOv2; RoPE models: None)
    qkv_bias: bool = True
    mlp_hidden: int = 0  # MLP hidden width (SwiGLU: one half), 0 when unknown
    path: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for logs and error messages."""
        mlp = ", SwiGLU" if self.swiglu else ""
        return (f"{self.family} {self.arch or 'custom'} ({self.format} layout, dim {self.embed_dim}, "
                f"{self.depth} blocks, patch {self.patch_size}, {self.num_register_tokens} register tokens{mlp})")


def short_list(items: Sequence[str], n: int = 6) -> str:
    """``a, b, c (+4 more)`` for error messages."""
    items = list(items)
    if not items:
        return "none"
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")
