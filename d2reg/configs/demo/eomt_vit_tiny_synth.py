"""LazyConfig twin of eomt_vit_tiny_synth.yaml (for tools/lazyconfig_train_net.py): EoMT on a tiny ViT-reg
(192-dim, 4 blocks, 3 heads, 4 registers, patch 8; the last 2 blocks see the 16 queries), trained from scratch
on the synthetic panoptic scenes (``d2reg_synth_panoptic_*``, 192-px images in a 128-px square) on a CPU, PQ on
the val split with a test object threshold of 0.3 (the YAML says why).

    python tools/lazyconfig_train_net.py --config-file configs/demo/eomt_vit_tiny_synth.py \\
        train.output_dir=output/demo_panoptic_lazy train.max_iter=10
"""
from detectron2.config import LazyCall as L

import d2reg.data  # noqa: F401  (registers d2reg_synth_panoptic_*)
from d2reg.modeling.eomt import panoptic_thing_ids

from ..common.eomt import eomt_lr_schedule, eomt_model, eomt_optimizer, eomt_train
from ..common.eomt_data import eomt_dataloader

SIZE = 128

model = eomt_model("dinov2", "coco", "panoptic", num_classes=6, arch="vit_small", input_size=SIZE,
                   thing_ids=L(panoptic_thing_ids)(dataset_name="${dataloader.test.dataset.names}"))
model.backbone.update(embed_dim=192, depth=4, num_heads=3, patch_size=8, weights=None,
                      layer_scale_init=1.0)  # random init: DINOv2's 1e-5 leaves the blocks ~identity for a short run
model.num_queries = 16
model.num_blocks = 2
model.criterion.num_points = 4096
model.object_mask_threshold = 0.3  # official 0.8: a minutes-long run is under-confident

dataloader = eomt_dataloader("panoptic", "d2reg_synth_panoptic_train", "d2reg_synth_panoptic_val", SIZE,
                             batch_size=4, workers=1)
dataloader.train.mapper.augmentations.scale_range = (0.5, 1.5)

optimizer = eomt_optimizer("dinov2", "coco")
optimizer.lr = 1e-3
optimizer.params.lr_decay = 1.0  # random init: no layer decay
lr_multiplier = eomt_lr_schedule("dinov2", "coco")
lr_multiplier.warmup_iters = [20, 40]

train = eomt_train("dinov2", "coco", max_iter=1500)
train.amp.enabled = False
train.device = "cpu"
train.output_dir = "output/demo_panoptic_lazy"
train.checkpointer.period = 100000
