"""The embedded synthetic data set (coloured shapes), registered in detectron2's catalogs on import.

Registered names (generated lazily, on the first ``DatasetCatalog.get`` or the first read of a path in
their metadata, under ``$D2REG_CACHE`` or ``~/.cache/d2reg``; deterministic from the seed; nobody has
to prepare them):

- ``d2reg_synth_train`` / ``d2reg_synth_val``: COCO instances json layout, ``evaluator_type="coco"``,
  ``thing_classes = SYNTH_THING_CLASSES`` (3 shapes), ``json_file`` set for ``COCOEvaluator``.
- ``d2reg_synth_sem_seg_train`` / ``d2reg_synth_sem_seg_val``: ADE20k PNG-mask layout,
  ``evaluator_type="sem_seg"``, ``stuff_classes = SYNTH_STUFF_CLASSES`` (background + 3 shapes,
  ``SYNTH_NUM_SEM_SEG_CLASSES = 4``), ``ignore_label=255``.
- ``d2reg_synth_panoptic_train`` / ``d2reg_synth_panoptic_val``: COCO panoptic layout (PNG + json,
  :mod:`d2reg.data.synthetic_panoptic`), ``evaluator_type="coco_panoptic_seg"``, the metadata of
  detectron2's ``register_coco_panoptic``; ``SYNTH_PANOPTIC_CLASSES`` = 3 shapes (things) + 3 textures
  (stuff), listed whole in both ``thing_classes`` and ``stuff_classes`` as detectron2's COCO panoptic.

EoMT's data mappers and augmentation (:mod:`d2reg.data.eomt_mapper`): ``EoMTPanopticDatasetMapper``,
``EoMTInstanceDatasetMapper``, ``EoMTSemanticDatasetMapper``, ``build_eomt_augmentation``,
``add_eomt_input_config``.
"""
from .eomt_mapper import (
    EoMTColorJitter,
    EoMTInstanceDatasetMapper,
    EoMTPanopticDatasetMapper,
    EoMTSemanticDatasetMapper,
    add_eomt_input_config,
    build_eomt_augmentation,
)
from .readers import load_sem_seg_gt
from .register import SYNTH_DATASETS, prepare_synthetic_dataset, register_synthetic_datasets
from .synthetic import (
    SYNTH_DEFAULTS,
    SYNTH_NUM_SEM_SEG_CLASSES,
    SYNTH_STUFF_CLASSES,
    SYNTH_THING_CLASSES,
    default_cache_dir,
    generate_synthetic_dataset,
    render_scene,
    synthetic_dataset_dir,
)
from .synthetic_panoptic import (
    SYNTH_PANOPTIC_CLASSES,
    SYNTH_PANOPTIC_STUFF_CLASSES,
    generate_synthetic_panoptic_dataset,
    id2rgb,
    render_panoptic_scene,
    rgb2id,
)

SYNTH_CLASSES = SYNTH_THING_CLASSES  # alias

__all__ = [
    "EoMTColorJitter",
    "EoMTInstanceDatasetMapper",
    "EoMTPanopticDatasetMapper",
    "EoMTSemanticDatasetMapper",
    "SYNTH_CLASSES",
    "SYNTH_PANOPTIC_CLASSES",
    "SYNTH_PANOPTIC_STUFF_CLASSES",
    "SYNTH_DATASETS",
    "SYNTH_DEFAULTS",
    "SYNTH_NUM_SEM_SEG_CLASSES",
    "SYNTH_STUFF_CLASSES",
    "SYNTH_THING_CLASSES",
    "add_eomt_input_config",
    "build_eomt_augmentation",
    "default_cache_dir",
    "generate_synthetic_dataset",
    "generate_synthetic_panoptic_dataset",
    "id2rgb",
    "load_sem_seg_gt",
    "prepare_synthetic_dataset",
    "register_synthetic_datasets",
    "render_panoptic_scene",
    "render_scene",
    "rgb2id",
    "synthetic_dataset_dir",
]

register_synthetic_datasets()
