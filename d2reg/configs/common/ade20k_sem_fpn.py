"""Shared base of the ADE20k fine-tuning configs: DINOv2(-reg) ViT/16 + simple feature pyramid (p2-p5,
no p6) + detectron2's semantic FPN head (``SemSegFPNHead``: 128 channels, GN, stride 4), fine-tuned
end to end with the COCO configs' per-size drop path and layer decay (d2reg.recipes, following
``model.backbone.net.arch``).
AdamW lr 1e-4, wd 0.05, 80k iterations at batch 16 of 512x512 crops, linear warmup (1500) then poly
decay; ``SemanticSegmentor`` pads to multiples of 32 (no square padding: test images are not square).
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling import SemanticSegmentor
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler

from d2reg.recipes import IMAGENET_MEAN, IMAGENET_STD

from .ade20k_sem_seg import dataloader
from .d2reg_vit import dinov2_vit, sfp
from .optim_train import adamw, make_train

model = L(SemanticSegmentor)(
    backbone=sfp(dinov2_vit("vit_base"), square_pad=0, top_block=None),
    sem_seg_head=L(SemSegFPNHead)(
        input_shape={
            f: L(ShapeSpec)(stride=s, channels="${....backbone.out_channels}")
            for f, s in zip(["p2", "p3", "p4", "p5"], [4, 8, 16, 32])
        },
        num_classes=150,
        conv_dims=128,
        common_stride=4,
        norm="GN",
        ignore_value=255,
        loss_weight=1.0,
    ),
    pixel_mean=list(IMAGENET_MEAN),  # RGB
    pixel_std=list(IMAGENET_STD),
)

train = make_train(max_iter=80000, eval_period=8000)

optimizer = adamw(lr=1e-4, weight_decay=0.05)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(PolynomialDecayParamScheduler)(base_value=1.0, power=1.0),
    warmup_length=1500 / train.max_iter,
    warmup_method="linear",
    warmup_factor=1e-6,
)
