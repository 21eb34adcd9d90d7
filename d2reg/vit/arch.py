"""ViT architecture tables and the block-index rule shared by every d2reg family (torch only)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

__all__ = [
    "ARCHS",
    "DINOV2_ARCHS",
    "PRETRAIN_IMG_SIZE",
    "PRETRAIN_PATCH_SIZE",
    "ViTArch",
    "get_arch",
    "arch_for_width",
    "heads_for_width",
    "resolve_block_indices",
    "swiglu_hidden_features",
]

PRETRAIN_PATCH_SIZE = 14
PRETRAIN_IMG_SIZE = 518  # DINOv2's pre-training resolution: a 37x37 grid of 14-px patches


@dataclass(frozen=True)
class ViTArch:
    """Shape of a DINOv2 ViT (the numbers timm's ``vit_*_patch14_*dinov2`` models use)."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    swiglu: bool = False

    def replace(self, **overrides) -> ViTArch:
        values = {k: v for k, v in overrides.items() if v is not None}
        return ViTArch(**{**self.__dict__, **values})


DINOV2_ARCHS: Dict[str, ViTArch] = {
    "vit_small": ViTArch("vit_small", 384, 12, 6),
    "vit_base": ViTArch("vit_base", 768, 12, 12),
    "vit_large": ViTArch("vit_large", 1024, 24, 16),
    "vit_giant2": ViTArch("vit_giant2", 1536, 40, 24, swiglu=True),
}
ARCHS = DINOV2_ARCHS  # the DINOv2 table under its historical public name


def get_arch(arch: Union[str, ViTArch], table: Optional[Dict[str, ViTArch]] = None, **overrides) -> ViTArch:
    """Look up ``arch`` in ``table`` (default :data:`DINOV2_ARCHS`); ``overrides`` (embed_dim, depth,
    num_heads) that are not None replace the table's numbers (tiny test models, truncated models)."""
    table = DINOV2_ARCHS if table is None else table
    if isinstance(arch, ViTArch):
        return arch.replace(**overrides)
    if arch not in table:
        raise ValueError(f"Unknown arch {arch!r}: choose one of {sorted(table)}.")
    spec = table[arch].replace(**overrides)
    if spec.embed_dim % spec.num_heads:
        raise ValueError(f"embed_dim {spec.embed_dim} is not divisible by num_heads {spec.num_heads}.")
    return spec


def resolve_block_indices(indices: Sequence[int], depth: int, what: str = "out_indices") -> List[int]:
    """Sorted absolute block indices (negative ones count from the end); a clear error for an empty
    list, an index out of range or a block named twice."""
    if isinstance(indices, int) or not len(indices):
        raise ValueError(f"{what} must be a non-empty sequence of block indices, got {indices!r}.")
    take = [i + depth if i < 0 else i for i in indices]
    for i, j in zip(indices, take):
        if not 0 <= j < depth:
            raise ValueError(f"{what} entry {i} is out of range for a {depth}-block ViT.")
    if len(set(take)) != len(take):
        raise ValueError(f"{what} {tuple(indices)} name the same block twice.")
    return sorted(take)


def swiglu_hidden_features(embed_dim: int) -> int:
    """Width of the official SwiGLUFFNFused hidden layer (``w3``'s input): 4096 for ViT-g."""
    return (int(4 * embed_dim * 2 / 3) + 7) // 8 * 8


def heads_for_width(embed_dim: int, table: Optional[Dict[str, ViTArch]] = None) -> int:
    """Attention heads of a ViT of width ``embed_dim`` when a checkpoint does not say: the table's
    value for a standard width, else head dim 64 (every DINOv2/DINOv3 model uses 64)."""
    for spec in (DINOV2_ARCHS if table is None else table).values():
        if spec.embed_dim == embed_dim:
            return spec.num_heads
    return max(1, embed_dim // 64)


def arch_for_width(embed_dim: int, swiglu: bool, table: Optional[Dict[str, ViTArch]] = None) -> Optional[str]:
    """Name of the table's architecture with this width and MLP kind, or None (a custom model)."""
    for name, spec in (DINOV2_ARCHS if table is None else table).items():
        if spec.embed_dim == embed_dim and spec.swiglu == swiglu:
            return name
    return None
