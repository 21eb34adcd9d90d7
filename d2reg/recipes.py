"""The per-size fine-tuning recipe, in one table for LazyConfigs and YACS configs alike.

One row per (family, arch): drop path, layer-wise lr decay and the official checkpoint file name.
Adding a size or a family is one row here. LazyConfigs reach the table through LazyCalls of the
functions below, interpolated from the backbone's ``arch`` / ``num_register_tokens`` (configs/common/
d2reg_vit.py), so ``model.backbone.net.arch=vit_large`` or ``model.backbone.net.num_register_tokens=0``
on the command line changes every derived value. YACS configs reach it through
:func:`d2reg.config.resolve_recipe` (``MODEL.D2REG.WEIGHTS "official"``, ``DROP_PATH_RATE`` / ``LR_DECAY``
``-1``).

Why these numbers (DINOv2):

- Drop path follows ViTDet by model size (B 0.1, L 0.4, H 0.5); ViT-S gets B's 0.1 and ViT-g (1.1B,
  larger than ViT-H) H's 0.5. ViT-Adapter's DINOv2-L Mask R-CNN also used 0.4.
- Layer decay: ViTDet's 0.7 / 0.8 (B / L) were tuned for MAE weights, which need a lot of adaptation.
  DINOv2's features are already strong and the only DINOv2-specific evidence says decay harder:
  ViT-Adapter's released DINOv2 Mask R-CNN configs (AdamW, lr 1e-4, wd 0.05) use 0.70 (S), 0.60 (B),
  0.65 (L; an earlier revision had 0.80 and was lowered), and their ViT-S sweep gives box AP
  51.5 / 51.0 / 50.8 / 49.4 / 48.8 at 0.70 / 0.75 / 0.80 / 0.90 / 0.95, monotone in favour of the
  lowest value tried. d2reg takes their released values for S/B/L (with their wd 0.05, see
  configs/common/coco_vitdet.py). ViT-g has no published value: 0.77 gives its patch embedding (41
  steps from the top) the same multiplier as ViT-L's at 0.65 (25 steps): 0.77**41 ~= 0.65**25 ~= 2e-5.
  Untested. Caveat: ViT-Adapter adds a convolutional spatial branch; on a plain ViT + simple pyramid
  the ViT must adapt more, so a slightly higher rate may turn out better. Sweep if you have the budget.

DINOv3 rows (arch ``vit_small``, ``vit_small_plus``, ``vit_base``, ``vit_large``, ``vit_huge_plus``,
``vit_7b``; official files ``dinov3_vits16_pretrain_lvd1689m-<hash>.pth`` ...) go in the same table
once their recipe is chosen.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RECIPES",
    "Recipe",
    "drop_path_rate",
    "get_recipe",
    "layer_decay",
    "official_checkpoint",
]

# ImageNet normalisation in RGB order on 0-255 pixels, as DINOv2 / DINOv3 were trained
# (detectron2's PIXEL_MEAN / PIXEL_STD with INPUT.FORMAT "RGB").
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class Recipe(NamedTuple):
    drop_path: float  # stochastic depth rate of the last block (linear from 0)
    layer_decay: float  # layer-wise lr decay per block (d2reg.lr_decay_rate)
    checkpoint: str  # official file name; "{reg}" becomes "_reg4" with registers, "" without


RECIPES = {
    ("dinov2", "vit_small"): Recipe(0.1, 0.70, "dinov2_vits14{reg}_pretrain.pth"),
    ("dinov2", "vit_base"): Recipe(0.1, 0.60, "dinov2_vitb14{reg}_pretrain.pth"),
    ("dinov2", "vit_large"): Recipe(0.4, 0.65, "dinov2_vitl14{reg}_pretrain.pth"),
    ("dinov2", "vit_giant2"): Recipe(0.5, 0.77, "dinov2_vitg14{reg}_pretrain.pth"),
}


def get_recipe(arch: str, family: str = "dinov2") -> Recipe:
    """The table row of ``(family, arch)``; a KeyError naming the known rows otherwise."""
    try:
        return RECIPES[(family, arch)]
    except KeyError:
        known = ", ".join(f"{f}/{a}" for f, a in RECIPES)
        raise KeyError(
            f"d2reg has no recipe for {family}/{arch} (known: {known}). Set the backbone's weights, "
            "drop_path_rate and the optimizer's lr_decay explicitly, or add a row to d2reg.recipes.RECIPES."
        ) from None


def official_checkpoint(arch: str, registers: int = 4, family: str = "dinov2", root: Optional[str] = None) -> str:
    """Local path of the official checkpoint of ``(family, arch)``: ``<root>/<official file name>``,
    ``root`` defaulting to ``$D2REG_CHECKPOINTS`` or ``./checkpoints``. DINOv2 with registers:
    ``dinov2_vitb14_reg4_pretrain.pth``, without (``registers=0``): ``dinov2_vitb14_pretrain.pth``.
    Nothing is downloaded; a missing file is reported when the backbone loads it."""
    name = get_recipe(arch, family).checkpoint.format(reg="_reg4" if int(registers) else "")
    root = root if root is not None else os.environ.get("D2REG_CHECKPOINTS", "checkpoints")
    return os.path.join(root, name)


def drop_path_rate(arch: str, family: str = "dinov2") -> float:
    """The recipe's drop path rate for ``(family, arch)``."""
    return get_recipe(arch, family).drop_path


def layer_decay(arch: str, family: str = "dinov2") -> float:
    """The recipe's layer-wise lr decay for ``(family, arch)``."""
    return get_recipe(arch, family).layer_decay
