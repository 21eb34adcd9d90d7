"""Layer-wise learning-rate decay for DINOv2 ViT parameters."""
from __future__ import annotations

import re

__all__ = ["lr_decay_rate"]

_STEM = ("cls_token", "reg_token", "register_tokens", "pos_embed", "patch_embed", "mask_token")


def lr_decay_rate(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12, prefix: str = "backbone") -> float:
    """lr multiplier ``decay ** (num_layers + 1 - layer_id)`` for parameter ``name``.

    Layer ids: CLS/register tokens, position and patch embeddings 0; ``blocks.i`` i + 1; everything
    else in the backbone (pyramid, final norm) ``num_layers + 1`` (multiplier 1). Parameters outside
    ``prefix`` (the heads) get 1. Unlike detectron2's ``get_vit_lr_decay_rate``, which leaves
    ``cls_token``/``reg_token`` at the top rate, the tokens decay with the embeddings.
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
