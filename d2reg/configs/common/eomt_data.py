"""Data of the EoMT recipes (tue-mps/eomt ``datasets/``): EoMT's mappers and augmentation
(d2reg.data.eomt_mapper) over detectron2's builtin COCO / ADE20k registrations, 16 images per iteration.

- COCO panoptic: ``coco_2017_{train,val}_panoptic`` (133 classes; prepare ``$DETECTRON2_DATASETS/coco`` with
  ``panoptic_{train,val}2017`` as detectron2's datasets/README.md says), PQ with detectron2's
  ``COCOPanopticEvaluator`` (or d2reg's equal PQ when panopticapi is not installed);
- COCO instance: ``coco_2017_{train,val}`` (80 classes), segm AP with ``COCOEvaluator``;
- ADE20k semantic: ``ade20k_sem_seg_{train,val}`` (150 classes), mIoU with ``SemSegEvaluator``.

Training: flip, large-scale jitter (0.1-2.0 COCO, 0.5-2.0 + colour jitter ADE20k) and an ``input_size``
crop padded with 0; evaluation images go in as read (the model resizes and pads, or slides windows)."""
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.data import get_detection_dataset_dicts as dataset_dicts
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from omegaconf import OmegaConf

from d2reg.data import load_sem_seg_gt
from d2reg.data.eomt_mapper import (
    EoMTInstanceDatasetMapper,
    EoMTPanopticDatasetMapper,
    EoMTSemanticDatasetMapper,
    build_eomt_augmentation,
)
from d2reg.evaluation import build_panoptic_evaluator

_MAPPERS = {"panoptic": EoMTPanopticDatasetMapper, "instance": EoMTInstanceDatasetMapper,
            "semantic": EoMTSemanticDatasetMapper}
_EVALUATORS = {
    "panoptic": L(build_panoptic_evaluator)(dataset_name="${..test.dataset.names}"),
    "instance": L(COCOEvaluator)(dataset_name="${..test.dataset.names}", use_fast_impl=False),
    # load_sem_seg_gt: detectron2's default loader calls np.array(..., copy=False), which NumPy 2 rejects
    "semantic": L(SemSegEvaluator)(dataset_name="${..test.dataset.names}", sem_seg_loading_fn=load_sem_seg_gt),
}


def eomt_dataloader(task: str, train: str, test: str, input_size: int, batch_size: int = 16, workers: int = 4):
    """``dataloader.{train,test,evaluator}`` for ``task`` on the registered sets ``train`` / ``test``."""
    mapper = _MAPPERS[task]
    dataloader = OmegaConf.create()
    dataloader.train = L(build_detection_train_loader)(
        dataset=L(dataset_dicts)(names=train),
        mapper=L(mapper)(
            is_train=True,
            augmentations=L(build_eomt_augmentation)(task=task, input_size=input_size, is_train=True),
            image_format="RGB",
        ),
        total_batch_size=batch_size,
        num_workers=workers,
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(dataset_dicts)(names=test, filter_empty=False),
        mapper=L(mapper)(is_train=False, augmentations=[], image_format="RGB"),
        num_workers=workers,
    )
    dataloader.evaluator = _EVALUATORS[task]
    return dataloader
