"""Shared base of the ADE20k linear-probe configs: the DINOv2 papers' protocol on frozen features.

A frozen DINOv2(-reg) ViT at its native patch 14 (no kernel resampling; ``SemanticSegmentor`` pads to
multiples of 14) with the final LayerNorm applied, as the official ``get_intermediate_layers(norm=True)``;
``d2reg.LinearSemSegHead``: SyncBN + 1x1 conv on the last block's patch tokens (``linear4_*``: the last
4 blocks concatenated), bilinear upsampling. AdamW lr 1e-3, wd 1e-4, 40k iterations at batch 16,
linear warmup (1500) then linear (poly 1.0) decay, as the DINOv2 linear evaluation. Only the head
trains (the backbone has no trainable parameter: the optimizer only sees the head).

DINOv3: :func:`use_dinov3` switches the backbone to a frozen DINOv3 ViT/16 with its final norm and
takes the DINOv3 protocol (facebookresearch/dinov3, ``dinov3/eval/segmentation/configs/
config-ade20k-linear-training.yaml``: BatchNorm + linear head on the last layer's normed patch tokens,
AdamW lr 1e-3, betas 0.9/0.999, weight decay 1e-3, 40k iterations at 8 x 2 images, 1500 warm-up
iterations from 1e-6, then cosine to 0; 512 crops of images rescaled 0.5-2.0x). Their evaluation is
sliding-window (512, stride 341); here it is whole-image, as for DINOv2.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling import SemanticSegmentor
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler, PolynomialDecayParamScheduler

from d2reg.modeling.semseg import LinearSemSegHead, vit_feature_shapes
from d2reg.recipes import IMAGENET_MEAN, IMAGENET_STD

from .ade20k_sem_seg import dataloader
from .d2reg_vit import dinov2_vit, dinov3_vit
from .optim_train import adamw, make_train

model = L(SemanticSegmentor)(
    backbone=dinov2_vit(
        "vit_base",
        patch_size=14,
        freeze_at="all",
        final_norm=True,
        out_indices=(-1,),
        drop_path_rate=0.0,
        embed_dim=None,
        depth=None,
        num_heads=None,
    ),
    sem_seg_head=L(LinearSemSegHead)(
        input_shape=L(vit_feature_shapes)(
            arch="${...backbone.arch}",
            out_indices="${...backbone.out_indices}",
            patch_size="${...backbone.patch_size}",
            embed_dim="${...backbone.embed_dim}",
            depth="${...backbone.depth}",
            num_heads="${...backbone.num_heads}",
        ),
        num_classes=150,
        norm="SyncBN",
        dropout=0.0,
        ignore_value=255,
    ),
    pixel_mean=list(IMAGENET_MEAN),  # RGB
    pixel_std=list(IMAGENET_STD),
)

train = make_train(max_iter=40000, eval_period=4000)

optimizer = adamw(lr=1e-3, weight_decay=1e-4, decay_arch=None)  # only the head trains: no layer decay

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(PolynomialDecayParamScheduler)(base_value=1.0, power=1.0),
    warmup_length=1500 / train.max_iter,
    warmup_method="linear",
    warmup_factor=1e-6,
)


def last_four_blocks(model) -> None:
    """Linear probe on the last 4 blocks' patch tokens, concatenated (4x the channels)."""
    model.backbone.out_indices = (-4, -3, -2, -1)


def use_dinov3(model, optimizer, lr_multiplier, arch: str = "vit_base") -> None:
    """Switch a linear-probe config to a frozen DINOv3 ViT/16 (``arch`` as d2reg.recipes' DINOv3 rows)
    and the DINOv3 probe protocol (module docstring): weight decay 1e-3, cosine decay after warm-up.
    Keeps ``out_indices`` (call :func:`last_four_blocks` before or after)."""
    model.backbone = dinov3_vit(
        arch,
        freeze_at="all",
        final_norm=True,
        out_indices=tuple(model.backbone.out_indices),
        drop_path_rate=0.0,
        embed_dim=None,
        depth=None,
        num_heads=None,
    )
    model.sem_seg_head.input_shape = L(vit_feature_shapes)(
        family="dinov3",
        arch="${...backbone.arch}",
        out_indices="${...backbone.out_indices}",
        patch_size=16,
        embed_dim="${...backbone.embed_dim}",
        depth="${...backbone.depth}",
        num_heads="${...backbone.num_heads}",
    )
    optimizer.weight_decay = 1e-3
    lr_multiplier.scheduler = L(CosineParamScheduler)(start_value=1.0, end_value=0.0)
