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

Why these numbers (DINOv3). Nothing published fine-tunes DINOv3 end to end in a ViTDet-style
detector or segmenter: the paper (Simeoni et al., 2025, arXiv:2508.10104) evaluates dense tasks on a
FROZEN backbone (linear probes; Plain-DETR on the frozen ViT-7B, 66.1 COCO mAP; Mask2Former + ViT-Adapter
on the frozen 7B for ADE20k), and the official repository (facebookresearch/dinov3) ships no
fine-tuning recipe (its ``layerwise_decay`` / ``drop_path_rate`` keys are pre-training and distillation
settings; e.g. ``dinov3/configs/train/dinov3_vitl16_lvd1689m_distilled.yaml`` distils ViT-L from the 7B
with drop path 0.0).
So every DINOv3 row is EXTRAPOLATED from the closest evidence, the DINOv2 rows above:

- Drop path: ViTDet by model size, as for DINOv2 (a fine-tuning regulariser of the detector, not a
  property of the pre-training): S, S+ and B 0.1; L 0.4; H+ (840M, 32 blocks) and 7B ViTDet-H's 0.5.
- Layer decay: DINOv3's dense features are stronger than DINOv2's (ADE20k linear probe, paper: S 47.0,
  B 51.8, L 54.9 mIoU), so the DINOv2 argument (strong features need little adaptation: decay hard)
  holds at least as much; S / B / L take ViT-Adapter's DINOv2 values 0.70 / 0.60 / 0.65 at the same
  depths (12 / 12 / 24 blocks), S+ (12 blocks, SwiGLU) S's 0.70. H+ (32 blocks) and 7B (40 blocks)
  use the ViT-g rule: the patch embedding gets ViT-L's multiplier, 0.72**33 ~= 0.77**41 ~= 0.65**25
  ~= 2e-5. Untested; sweep 0.6-0.8 if you have the budget.
- 7B: full fine-tuning does not fit data-parallel training (6.7B parameters: ~108 GB of fp32 weights,
  gradients and AdamW state per GPU before activations); its row serves the frozen path (linear probe
  config, ``freeze_at="all"``). H+ fits with ``use_act_checkpoint`` (its configs set it).

Official DINOv3 file names (``dinov3_<arch>16[plus]_pretrain_lvd1689m-<hash>.pth``, the LVD-1689M web
weights): checked against ``dinov3/hub/backbones.py`` of facebookresearch/dinov3 (file name pattern
``{model_name}_{model_arch}_pretrain_{weights}{-hash}.pth`` and each hub function's default hash).
The DINOv3 weights are under the DINOv3 License (Meta), NOT Apache-2.0 like d2reg: obtain them from
Meta (https://github.com/facebookresearch/dinov3, access form) and accept that licence; d2reg never
downloads them.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

from detectron2.utils.registry import locate

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EOMT_RECIPES",
    "RECIPES",
    "EoMTRecipe",
    "Recipe",
    "backbone_family",
    "default_num_blocks",
    "drop_path_rate",
    "eomt_annealing_windows",
    "eomt_max_iter",
    "get_eomt_recipe",
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
    # DINOv3 (4 storage tokens always: "{reg}" does not occur). Extrapolated from the DINOv2 rows and
    # ViTDet, see the module docstring; weights under the DINOv3 License, not Apache-2.0.
    ("dinov3", "vit_small"): Recipe(0.1, 0.70, "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"),
    ("dinov3", "vit_small_plus"): Recipe(0.1, 0.70, "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth"),
    ("dinov3", "vit_base"): Recipe(0.1, 0.60, "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"),
    ("dinov3", "vit_large"): Recipe(0.4, 0.65, "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"),
    ("dinov3", "vit_huge_plus"): Recipe(0.5, 0.72, "dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth"),
    ("dinov3", "vit_7b"): Recipe(0.5, 0.77, "dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth"),
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


def backbone_family(backbone) -> str:
    """The recipe family of a backbone class (its ``checkpoint_family``: ``DINOv2Backbone`` -> "dinov2",
    ``DINOv3Backbone`` -> "dinov3"), given as the class, its dotted name (a LazyConfig ``_target_``
    after save/load) or already as a family name. LazyConfigs interpolate it from the backbone node,
    ``L(backbone_family)(backbone="${model.backbone.net._target_}")``, so the optimizer's layer decay
    follows a family switch of the backbone without a second edit."""
    if isinstance(backbone, str):
        if any(f == backbone for f, _ in RECIPES):
            return backbone
        backbone = locate(backbone)
    family = getattr(backbone, "checkpoint_family", "")
    if not family:
        raise ValueError(f"{backbone!r} is no d2reg family backbone (no checkpoint_family).")
    return family


# ----------------------------------------------------------------------------------------------- EoMT
class EoMTRecipe(NamedTuple):
    """The official EoMT training recipe of one (family, task) (tue-mps/eomt ``configs/`` and the
    ``MaskClassification*`` defaults; batch 16 everywhere)."""
    lr: float
    llrd: float  # official layer-wise lr decay: block i ``llrd ** (depth - 1 - i)``, stem as block 0
    decay_query_blocks: bool  # official ``llrd_l2_enabled``: False = the query blocks at full lr
    warmup_iters: tuple  # (heads first, then the ViT), iterations at batch 16
    num_queries: int
    input_size: int
    epochs: int
    dataset_images: int  # training images (one epoch at batch 16 = dataset_images // 16 iterations)
    anneal_span: tuple  # (start, end) of the annealing windows, fractions of the schedule
    first_block_at_warmup: bool  # DINOv3: the first query block anneals over [0, ViT warm-up length]


_COCO, _ADE = 118287, 20210
_NUM_QUERY_BLOCKS = {"vit_small": 3, "vit_base": 3, "vit_large": 4, "vit_giant2": 5}


def default_num_blocks(arch: str) -> int:
    """EoMT's number of query blocks ("L2") for a ViT size: 3 for S/B, 4 for L, 5 for g (official configs;
    other sizes: 4)."""
    return _NUM_QUERY_BLOCKS.get(arch, 4)

EOMT_RECIPES = {
    ("dinov2", "coco"): EoMTRecipe(1e-4, 0.8, True, (500, 1000), 200, 640, 12, _COCO, (1 / 6, 5 / 6), False),
    ("dinov2", "ade20k"): EoMTRecipe(1e-4, 0.8, True, (500, 1000), 100, 512, 31, _ADE, (1 / 6, 5 / 6), False),
    ("dinov3", "coco"): EoMTRecipe(2e-4, 0.8, False, (2000, 3000), 200, 640, 12, _COCO, (1 / 6, 5 / 6), True),
    # official: llrd 1.0 and lr_mult 0.1, which its optimizer code never applies (the lr_mult branch is an
    # unreachable elif): every ViT parameter trains at the full lr; its windows 6520..16300 of ~20208 steps
    ("dinov3", "ade20k"): EoMTRecipe(2e-4, 1.0, False, (2000, 3000), 100, 512, 16, _ADE, (0.3226, 0.8066), True),
}


def get_eomt_recipe(family: str, dataset: str) -> EoMTRecipe:
    """The official EoMT recipe of ``(family, dataset)`` ("coco" for panoptic / instance, "ade20k")."""
    try:
        return EOMT_RECIPES[(family, dataset)]
    except KeyError:
        raise KeyError(f"d2reg has no EoMT recipe for {family}/{dataset} (known: "
                       f"{', '.join(f'{f}/{d}' for f, d in EOMT_RECIPES)}).") from None


def eomt_max_iter(family: str, dataset: str, ims_per_batch: int = 16, epochs: Optional[float] = None) -> int:
    """Iterations of the official schedule (its epochs, or ``epochs``) at ``ims_per_batch`` images per step."""
    r = get_eomt_recipe(family, dataset)
    return int(round((r.epochs if epochs is None else epochs) * r.dataset_images / ims_per_batch))


def eomt_annealing_windows(num_blocks: int, max_iter: int, family: str = "dinov2", dataset: str = "coco",
                           vit_warmup_iters: Optional[int] = None):
    """Per query block ``(start, end)`` iterations of the mask annealing (keep probability 1 before start,
    ``(1 - progress) ** 0.9`` inside, 0 after), with the official shape at any schedule length.

    The official windows, written as fractions of their schedule, are equal-length windows whose starts
    are evenly spaced across ``anneal_span`` (DINOv2: 1/6 .. 5/6 of training, each 1/6 long: e.g. ViT-L's
    14782..73910 of 88692 steps; S/B 3 blocks, g 5 the same way). DINOv3 anneals its first query block
    during the ViT warm-up instead (official [0, 3000], its ViT warm-up length; here
    ``vit_warmup_iters``, default the recipe's) and, on COCO, keeps the DINOv2 windows of the other
    blocks; on ADE20k the other blocks tile the span. Returns ``(starts, ends)``, lists of ints."""
    r = get_eomt_recipe(family, dataset)
    lo, hi = r.anneal_span
    first = None
    spread = num_blocks
    if r.first_block_at_warmup:
        first = (0, r.warmup_iters[1] if vit_warmup_iters is None else vit_warmup_iters)
        spread = num_blocks if dataset == "coco" else num_blocks - 1
    length = (1 / 6) if spread == num_blocks else (hi - lo) / max(spread, 1)
    step = (hi - lo - length) / (spread - 1) if spread > 1 else 0.0
    windows = [(lo + i * step, lo + i * step + length) for i in range(spread)]
    if first is not None:
        windows = windows[1:] if spread == num_blocks else windows
    frac = [(round(a * max_iter), round(b * max_iter)) for a, b in windows]
    if first is not None:
        frac = [first] + frac
    return [a for a, _ in frac], [max(b, a + 1) for a, b in frac]  # >= 1 iteration even for tiny schedules
