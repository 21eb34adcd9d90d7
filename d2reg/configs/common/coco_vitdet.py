"""Shared base of the COCO configs: detectron2's ViTDet Mask R-CNN recipe (model_zoo's
``common/models/mask_rcnn_vitdet.py``: 2-conv RPN, 4conv1fc box head, LN heads; LSJ 1024; AdamW lr 1e-4;
100 epochs at batch 64) with a DINOv2(-reg) ViT-B/16 + simple feature pyramid as the backbone.
The size files only change ``model.backbone.net.arch``: drop path, layer decay and weights follow it
(d2reg.recipes, through d2reg_vit.py and optim_train.py)."""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from d2reg.zoo import get_config

from .coco_loader_lsj import dataloader
from .d2reg_vit import dinov2_vit, sfp
from .optim_train import adamw

model = get_config("common/models/mask_rcnn_vitdet.py").model
model.backbone = sfp(dinov2_vit("vit_base"), square_pad=1024)

train = get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = ""  # the backbone loads its DINOv2 weights itself (model.backbone.net.weights)

# 100 epochs = 184375 iterations x 64 images / 118k images per epoch
train.max_iter = 184375
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

# AdamW lr 1e-4, betas (0.9, 0.999), the recipe's layer decay, no weight decay on norms, position
# embedding and tokens. Weight decay 0.05, not ViTDet's 0.1: it comes with the DINOv2 layer-decay values
# of d2reg.recipes (ViT-Adapter's DINOv2 configs tuned them together at wd 0.05); ViTDet's 0.1 was tuned
# for MAE weights.
optimizer = adamw(lr=1e-4, weight_decay=0.05)


def to_cascade(model) -> None:
    """Mask R-CNN -> Cascade Mask R-CNN, as ViTDet's cascade configs: 3 stages (IoU 0.5/0.6/0.7),
    each with a 4conv1fc LN box head and a class-agnostic box regressor."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.box_regression import Box2BoxTransform
    from detectron2.modeling.matcher import Matcher
    from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers

    for k in ("box_head", "box_predictor", "proposal_matcher"):  # arguments Cascade R-CNN does not take
        model.roi_heads.pop(k)
    model.roi_heads.update(
        _target_=CascadeROIHeads,
        box_heads=[
            L(FastRCNNConvFCHead)(
                input_shape=ShapeSpec(channels=256, height=7, width=7),
                conv_dims=[256, 256, 256, 256],
                fc_dims=[1024],
                conv_norm="LN",
            )
            for _ in range(3)
        ],
        box_predictors=[
            L(FastRCNNOutputLayers)(
                input_shape=ShapeSpec(channels=1024),
                test_score_thresh=0.05,
                box2box_transform=L(Box2BoxTransform)(weights=(w1, w1, w2, w2)),
                cls_agnostic_bbox_reg=True,
                num_classes="${...num_classes}",
            )
            for (w1, w2) in [(10, 5), (20, 10), (30, 15)]
        ],
        proposal_matchers=[
            L(Matcher)(thresholds=[th], labels=[0, 1], allow_low_quality_matches=False) for th in [0.5, 0.6, 0.7]
        ],
    )
