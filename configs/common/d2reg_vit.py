"""Shared LazyConfig pieces: the DINOv2(-reg) ViT backbone, its simple feature pyramid, the per-size
recipe (drop path, layer-wise lr decay) and the official checkpoint file names.

Weights are never downloaded. ``model.backbone.net.weights`` (``model.backbone.weights`` for the
linear protocol) names a local official DINOv2 ``.pth``: by default ``$D2REG_CHECKPOINTS/<official
file name>`` with ``D2REG_CHECKPOINTS`` defaulting to ``./checkpoints``. A missing file stops the
model build with a FileNotFoundError naming the path (no silent random init); override with
``model.backbone.net.weights=/path/to/file.pth`` on the command line, or ``...weights=null`` (None) for a
deliberate random init.
"""
import os
from functools import partial

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from d2reg import DINOv2Backbone, SimpleFeaturePyramid, lr_decay_rate

# Per-size recipe: arch -> (depth, drop path, layer-wise lr decay, official file tag).
#
# Drop path follows ViTDet by model size (B 0.1, L 0.4, H 0.5); ViT-S gets B's 0.1 and ViT-g (1.1B,
# larger than ViT-H) H's 0.5. ViT-Adapter's DINOv2-L Mask R-CNN also used 0.4.
#
# Layer decay: ViTDet's 0.7 / 0.8 (B / L) were tuned for MAE weights, which need a lot of
# adaptation. DINOv2's features are already strong and the only DINOv2-specific evidence says decay
# harder: ViT-Adapter's released DINOv2 Mask R-CNN configs (AdamW, lr 1e-4, wd 0.05) use 0.70 (S),
# 0.60 (B), 0.65 (L; an earlier revision had 0.80 and was lowered), and their sweep for ViT-S gives
# box AP 51.5 / 51.0 / 50.8 / 49.4 / 48.8 at 0.70 / 0.75 / 0.80 / 0.90 / 0.95, monotone in favour
# of the lowest value tried. We take their released values for S/B/L (with their wd 0.05, see
# coco_vitdet.py). ViT-g has no published value: 0.77 gives its patch embedding (41 steps from the
# top) the same multiplier as ViT-L's at 0.65 (25 steps): 0.77**41 ~= 0.65**25 ~= 2e-5. Untested.
# Caveat: ViT-Adapter adds a convolutional spatial branch; on a plain ViT + simple pyramid the ViT
# must adapt more, so a slightly higher rate may turn out better. Sweep if you have the budget.
RECIPE = {
    "vit_small": dict(depth=12, drop_path=0.1, layer_decay=0.70, tag="vits14"),
    "vit_base": dict(depth=12, drop_path=0.1, layer_decay=0.60, tag="vitb14"),
    "vit_large": dict(depth=24, drop_path=0.4, layer_decay=0.65, tag="vitl14"),
    "vit_giant2": dict(depth=40, drop_path=0.5, layer_decay=0.77, tag="vitg14"),
}


def checkpoint(arch: str, registers: int = 4) -> str:
    """Local path of the official DINOv2 checkpoint for ``arch`` (``dinov2_vitb14_reg4_pretrain.pth``,
    or ``dinov2_vitb14_pretrain.pth`` for the register-free model) under ``$D2REG_CHECKPOINTS``."""
    name = f"dinov2_{RECIPE[arch]['tag']}{'_reg4' if registers else ''}_pretrain.pth"
    return os.path.join(os.environ.get("D2REG_CHECKPOINTS", "checkpoints"), name)


def layer_decay(arch: str, rate: float = None):
    """``optimizer.params.lr_factor_func`` for ``arch``: d2reg's layer-wise lr decay."""
    r = RECIPE[arch]
    return partial(lr_decay_rate, lr_decay_rate=r["layer_decay"] if rate is None else rate, num_layers=r["depth"])


def dinov2_vit(arch: str = "vit_base", registers: int = 4, **kwargs):
    """``L(DINOv2Backbone)`` at patch 16 with the size's drop path and official checkpoint path."""
    args = dict(
        arch=arch,
        num_register_tokens=registers,
        patch_size=16,
        weights=checkpoint(arch, registers),
        drop_path_rate=RECIPE[arch]["drop_path"],
        # Global attention in every block, as DINOv2 was pre-trained (fused SDPA keeps 64x64 tokens
        # affordable). ViTDet-style windows: window_size=14, window_block_indexes=[...].
        window_size=0,
    )
    args.update(kwargs)
    return L(DINOv2Backbone)(**args)


def sfp(net, square_pad: int = 1024, out_channels: int = 256, top_block="p6"):
    """ViTDet's simple feature pyramid (p2-p5, and p6 unless ``top_block=None``) over ``last_feat``."""
    return L(SimpleFeaturePyramid)(
        net=net,
        in_feature="last_feat",
        out_channels=out_channels,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        top_block=L(LastLevelMaxPool)() if top_block else None,
        norm="LN",
        square_pad=square_pad,
    )


def set_size(model, optimizer, arch: str) -> None:
    """Switch a config's ViT (``model.backbone.net`` or a bare ``model.backbone``) to ``arch``: its
    drop path, checkpoint path and layer-decay schedule (keeping the register setting)."""
    net = model.backbone.net if "net" in model.backbone else model.backbone
    net.arch = arch
    net.weights = checkpoint(arch, net.num_register_tokens)
    if net.get("freeze_at", 0) not in ("all", -1):  # frozen probes keep drop path 0
        net.drop_path_rate = RECIPE[arch]["drop_path"]
    if "lr_factor_func" in optimizer.params and optimizer.params.lr_factor_func is not None:
        optimizer.params.lr_factor_func = layer_decay(arch)


def without_registers(model) -> None:
    """The one switch to the original register-free DINOv2: 0 register tokens and the
    ``dinov2_vit?14_pretrain.pth`` checkpoint (d2reg then uses the official legacy position-embedding
    interpolation of those models automatically)."""
    net = model.backbone.net if "net" in model.backbone else model.backbone
    net.num_register_tokens = 0
    net.weights = checkpoint(net.arch, 0)
