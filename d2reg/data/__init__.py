"""The embedded synthetic data set (coloured shapes), registered in detectron2's catalogs on import.

Registered names (generated lazily, on the first ``DatasetCatalog.get`` or the first read of a path in
their metadata, under ``$D2REG_CACHE`` or ``~/.cache/d2reg``; deterministic from the seed; nobody has
to prepare them):

- ``d2reg_synth_train`` / ``d2reg_synth_val``: COCO instances json layout, ``evaluator_type="coco"``,
  ``thing_classes = SYNTH_THING_CLASSES`` (3 shapes), ``json_file`` set for ``COCOEvaluator``.
- ``d2reg_synth_sem_seg_train`` / ``d2reg_synth_sem_seg_val``: ADE20k PNG-mask layout,
  ``evaluator_type="sem_seg"``, ``stuff_classes = SYNTH_STUFF_CLASSES`` (background + 3 shapes,
  ``SYNTH_NUM_SEM_SEG_CLASSES = 4``), ``ignore_label=255``.
"""
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

SYNTH_CLASSES = SYNTH_THING_CLASSES  # alias

__all__ = [
    "SYNTH_CLASSES",
    "SYNTH_DATASETS",
    "SYNTH_DEFAULTS",
    "SYNTH_NUM_SEM_SEG_CLASSES",
    "SYNTH_STUFF_CLASSES",
    "SYNTH_THING_CLASSES",
    "default_cache_dir",
    "generate_synthetic_dataset",
    "load_sem_seg_gt",
    "prepare_synthetic_dataset",
    "register_synthetic_datasets",
    "render_scene",
    "synthetic_dataset_dir",
]

register_synthetic_datasets()
