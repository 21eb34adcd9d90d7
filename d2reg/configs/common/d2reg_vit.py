"""Shared LazyConfig pieces: the DINOv2(-reg) and DINOv3 ViT backbones and the simple feature pyramid.

The family is the backbone LazyCall: ``dinov2_vit(...)`` (``L(DINOv2Backbone)``) or ``dinov3_vit(...)``
(``L(DINOv3Backbone)``); a DINOv3 config is a DINOv2 one with ``model.backbone.net = dinov3_vit(arch)``
(the linear probes: ``ade20k_linear.use_dinov3``). Recipe values and the optimizer's layer decay read
the family from the backbone node (``d2reg.recipes.backbone_family`` of its ``_target_``).

The per-size values (drop path, layer-wise lr decay, official checkpoint name) are not written here:
they are LazyCalls into the one recipe table, ``d2reg.recipes``, interpolated from the backbone's
``arch`` and ``num_register_tokens`` (the optimizer's layer decay likewise: optim_train.py). A
command-line override of either changes all of them:

    model.backbone.net.arch=vit_large               # ViT-L: drop path 0.4, layer decay 0.65, its weights
    model.backbone.net.num_register_tokens=0        # the register-free DINOv2 (dinov2_vit?14_pretrain.pth)

(``model.backbone.arch`` / ``model.backbone.num_register_tokens`` for the linear probes, whose backbone
is the bare ViT). Any derived value can still be set directly, e.g. ``model.backbone.net.drop_path_rate=0.2``.

Weights are never downloaded. ``model.backbone.net.weights`` names a local official DINOv2 ``.pth``: by
default ``$D2REG_CHECKPOINTS/<official file name>`` (``D2REG_CHECKPOINTS`` defaults to ``./checkpoints``,
read when the model is built). A missing file stops the build with a FileNotFoundError naming the path
(no silent random init); override with ``model.backbone.net.weights=/path/to/file.pth``, or
``...weights=null`` for a deliberate random init.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from d2reg import DINOv2Backbone, DINOv3Backbone, SimpleFeaturePyramid
from d2reg.recipes import backbone_family, drop_path_rate, official_checkpoint

FAMILY = "dinov2"  # the family of dinov2_vit (and of the configs that do not switch)


def family_of(target: str = "${model.backbone.net._target_}"):
    """LazyCall giving the recipe family of the backbone whose ``_target_`` ``target`` interpolates."""
    return L(backbone_family)(backbone=target)


def dinov2_vit(arch: str = "vit_base", registers: int = 4, **kwargs):
    """``L(DINOv2Backbone)`` at patch 16; weights and drop path follow ``arch`` / ``num_register_tokens``."""
    args = dict(
        arch=arch,
        num_register_tokens=registers,
        patch_size=16,
        weights=L(official_checkpoint)(arch="${..arch}", registers="${..num_register_tokens}", family=FAMILY),
        drop_path_rate=L(drop_path_rate)(arch="${..arch}", family=FAMILY),
        # Global attention in every block, as DINOv2 was pre-trained (fused SDPA keeps 64x64 tokens
        # affordable). ViTDet-style windows: window_size=14, window_block_indexes=[...].
        window_size=0,
    )
    args.update(kwargs)
    return L(DINOv2Backbone)(**args)


def dinov3_vit(arch: str = "vit_base", **kwargs):
    """``L(DINOv3Backbone)`` (patch 16, 4 storage tokens, RoPE): weights and drop path follow ``arch``
    (``vit_small``, ``vit_small_plus``, ``vit_base``, ``vit_large``, ``vit_huge_plus``, ``vit_7b``;
    d2reg.recipes' DINOv3 rows). Default weights: ``$D2REG_CHECKPOINTS/dinov3_vitb16_pretrain_lvd1689m-
    73cec8be.pth`` etc. (the official names; DINOv3 License, not Apache-2.0; never downloaded).
    RoPE: the official inference RoPE, also while fine-tuning (no ``rope_augment``)."""
    args = dict(
        arch=arch,
        weights=L(official_checkpoint)(arch="${..arch}", family="dinov3"),
        drop_path_rate=L(drop_path_rate)(arch="${..arch}", family="dinov3"),
        window_size=0,  # global attention in every block, as pre-trained
    )
    args.update(kwargs)
    return L(DINOv3Backbone)(**args)


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

