"""LazyConfig twin of mask_rcnn_vit_tiny_synth.yaml (for tools/lazyconfig_train_net.py): a tiny
ViT-reg (192-dim, 4 blocks, 3 heads, 4 registers, patch 8) + simple feature pyramid (128 channels, p3-p5)
+ slim Mask R-CNN (detectron2's shipped ``common/models/mask_rcnn_fpn.py`` with smaller heads), trained from
scratch on the synthetic shapes (``d2reg_synth_train``, 192-px images) on a CPU.

    python tools/lazyconfig_train_net.py --config-file configs/demo/mask_rcnn_vit_tiny_synth.py \
        train.output_dir=output/demo_lazy train.max_iter=10
"""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

import d2reg.data  # noqa: F401  (registers d2reg_synth_*)
from d2reg import DINOv2Backbone, SimpleFeaturePyramid
from d2reg.recipes import IMAGENET_MEAN, IMAGENET_STD
from d2reg.solver import get_d2reg_optimizer_params
from d2reg.zoo import get_config

C = 128  # pyramid channels
SIZE = 192

model = get_config("common/models/mask_rcnn_fpn.py").model
model.pixel_mean = list(IMAGENET_MEAN)
model.pixel_std = list(IMAGENET_STD)
model.input_format = "RGB"
model.backbone = L(SimpleFeaturePyramid)(
    net=L(DINOv2Backbone)(
        arch="vit_small", embed_dim=192, depth=4, num_heads=3, num_register_tokens=4, patch_size=8, weights=None,
        layer_scale_init=1.0,  # random init: DINOv2's 1e-5 leaves the blocks ~identity for a short run
    ),
    in_feature="last_feat",
    out_channels=C,
    scale_factors=(1.0, 0.5),  # stride 8 -> p3, p4 (no p2: see the YAML)
    top_block=L(LastLevelMaxPool)(),  # p5
    norm="LN",
)
rpn = model.proposal_generator
rpn.head.in_channels = C
LEVELS = ["p3", "p4", "p5"]
STRIDES = [2 ** int(level[1:]) for level in LEVELS]  # p<k>: stride 2**k
rpn.in_features = LEVELS
rpn.anchor_generator.sizes = [[4 * s] for s in STRIDES]  # 32, 64, 128 px
rpn.anchor_generator.strides = STRIDES
rpn.batch_size_per_image = 128
rpn.pre_nms_topk = (1000, 500)
rpn.post_nms_topk = (256, 100)
roi = model.roi_heads
roi.num_classes = 3
roi.batch_size_per_image = 64
roi.box_in_features = roi.mask_in_features = LEVELS
roi.box_pooler.scales = roi.mask_pooler.scales = [1.0 / s for s in STRIDES]
roi.box_pooler.sampling_ratio = 1
roi.box_head.input_shape = ShapeSpec(channels=C, height=7, width=7)
roi.box_head.fc_dims = [256, 256]
roi.box_predictor.input_shape = ShapeSpec(channels=256)
roi.box_predictor.test_topk_per_image = 50
roi.mask_pooler.sampling_ratio = 1
roi.mask_head.input_shape = ShapeSpec(channels=C, width=14, height=14)
roi.mask_head.conv_dims = [C, C]

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="d2reg_synth_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=SIZE, max_size=SIZE),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="RGB",
        use_instance_mask=True,
    ),
    total_batch_size=4,
    num_workers=1,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="d2reg_synth_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=SIZE, max_size=SIZE)],
        image_format="RGB",
    ),
    num_workers=1,
)
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", use_fast_impl=False)

train = get_config("common/train.py").train
# or an official / timm / HF DINOv2 file (D2RegCheckpointer: its first 4 blocks) with the backbone at its
# width, e.g. ViT-S: model.backbone.net.embed_dim=384 model.backbone.net.num_heads=6
train.init_checkpoint = ""
train.output_dir = "output/demo_instance_lazy"
train.max_iter = 800
train.eval_period = 0  # evaluate once, at the end
train.checkpointer.period = 100000
train.device = "cpu"

optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 2e-4
optimizer.weight_decay = 0.05
optimizer.params._target_ = get_d2reg_optimizer_params  # layer decay (lr_decay=1.0: off for random init)
optimizer.params.base_lr = "${..lr}"
optimizer.params.lr_decay = 1.0
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[700], num_updates=800),
    warmup_length=20 / train.max_iter,
    warmup_factor=0.01,
)
