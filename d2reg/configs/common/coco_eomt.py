"""Base of the COCO EoMT configs: EoMT on DINOv2-reg ViT-L/16 at 640, COCO panoptic (133 classes, 200
queries, 4 query blocks), 12 epochs at batch 16 (the official ``configs/dinov2/coco/panoptic/
eomt_large_640.yaml``: PQ 56.0). The size files change ``model.backbone.arch`` (query blocks, weights
follow), the 1280 ones the input size; :func:`to_instance` makes an instance-segmentation recipe and
:func:`.eomt.to_dinov3` the DINOv3 one (lr 2e-4, no lr decay in the query blocks, 2000 + 3000 warm-up, first
query block annealed during the ViT warm-up)."""
from detectron2.config import LazyCall as L

from d2reg.modeling.eomt import panoptic_thing_ids
from d2reg.recipes import eomt_max_iter

from .eomt import eomt_lr_schedule, eomt_model, eomt_optimizer, eomt_train, to_dinov3  # noqa: F401
from .eomt_data import eomt_dataloader

FAMILY, DATASET = "dinov2", "coco"

model = eomt_model(FAMILY, DATASET, "panoptic", num_classes=133, arch="vit_large",
                   thing_ids=L(panoptic_thing_ids)(dataset_name="${dataloader.test.dataset.names}"))
dataloader = eomt_dataloader("panoptic", "coco_2017_train_panoptic", "coco_2017_val_panoptic", input_size=640)
optimizer = eomt_optimizer(FAMILY, DATASET)
lr_multiplier = eomt_lr_schedule(FAMILY, DATASET)
train = eomt_train(FAMILY, DATASET, max_iter=eomt_max_iter(FAMILY, DATASET, 16), eval_period=7392)  # ~1 epoch


def set_input_size(model, dataloader, size: int) -> None:
    """Train crops and inference size ``size`` (640 or 1280 in the official configs)."""
    model.input_size = size
    dataloader.train.mapper.augmentations.input_size = size


def to_instance(model, dataloader) -> None:
    """COCO instance segmentation (80 classes; boxes from the masks; segm AP)."""
    size = model.input_size
    model.task, model.num_classes, model.thing_ids = "instance", 80, None
    dataloader.update(eomt_dataloader("instance", "coco_2017_train", "coco_2017_val", input_size=size))
