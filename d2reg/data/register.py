"""Registration of the synthetic data sets in detectron2's ``DatasetCatalog`` / ``MetadataCatalog``.

The data set writes itself when detectron2 first needs it: the ``DatasetCatalog`` loaders generate the
files if missing, and so does reading a path from the metadata (``json_file``, which ``COCOEvaluator``
opens when it is constructed; ``image_root``; ``sem_seg_root``). No caller has to prepare anything,
whatever the order in which loaders and evaluators are built.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

from .synthetic import (
    SYNTH_DEFAULTS,
    SYNTH_STUFF_CLASSES,
    SYNTH_THING_CLASSES,
    dataset_paths,
    generate_synthetic_dataset,
    synthetic_dataset_dir,
)
from .synthetic_panoptic import (
    generate_synthetic_panoptic_dataset,
    panoptic_dataset_paths,
    panoptic_metadata,
    synthetic_panoptic_dataset_dir,
)

__all__ = ["SYNTH_DATASETS", "register_synthetic_datasets", "prepare_synthetic_dataset"]

# name -> (task, split)
SYNTH_DATASETS = {
    "d2reg_synth_train": ("instances", "train"),
    "d2reg_synth_val": ("instances", "val"),
    "d2reg_synth_sem_seg_train": ("sem_seg", "train"),
    "d2reg_synth_sem_seg_val": ("sem_seg", "val"),
    "d2reg_synth_panoptic_train": ("panoptic", "train"),
    "d2reg_synth_panoptic_val": ("panoptic", "val"),
}
_THING_COLORS = [(230, 60, 60), (60, 160, 230), (90, 200, 90)]
_STUFF_COLORS = [(40, 40, 40)] + _THING_COLORS
_GENERATORS = {}  # name -> zero-argument function generating the data set, returns its directory


class _SynthMetadata(Metadata):
    """detectron2 ``Metadata`` whose file-system paths generate the data set on first read."""

    def __init__(self, name: str, generate: Callable[[], str], paths: Dict[str, str]):
        super().__init__(name=name)
        object.__setattr__(self, "_generate", generate)
        object.__setattr__(self, "_paths", dict(paths))

    def __getattr__(self, key):
        paths = self.__dict__.get("_paths", {})
        if key in paths:
            self.__dict__["_generate"]()
            return paths[key]
        return super().__getattr__(key)

    def as_dict(self):
        ret = {k: v for k, v in self.__dict__.items() if k not in ("_generate", "_paths")}
        ret.update(self.__dict__.get("_paths", {}))  # reading them all as a dict: the files exist then
        self.__dict__["_generate"]()
        return ret


def register_synthetic_datasets(
    root: Optional[str] = None,
    num_train: int = SYNTH_DEFAULTS["num_train"],
    num_val: int = SYNTH_DEFAULTS["num_val"],
    image_size: int = SYNTH_DEFAULTS["image_size"],
    seed: int = SYNTH_DEFAULTS["seed"],
) -> str:
    """(Re-)register ``d2reg_synth_{train,val}`` (COCO instances, ``evaluator_type="coco"``),
    ``d2reg_synth_sem_seg_{train,val}`` (ADE20k-style PNG masks, ``evaluator_type="sem_seg"``) and
    ``d2reg_synth_panoptic_{train,val}`` (COCO panoptic, ``evaluator_type="coco_panoptic_seg"``, the
    metadata of detectron2's ``register_coco_panoptic``; scenes of their own, with stuff regions).

    Nothing is generated here: the images are written on the first ``DatasetCatalog.get`` of a
    name, the first read of a path in its metadata (``json_file``, ``image_root``, ``sem_seg_root``,
    ``panoptic_root``, ``panoptic_json``) or :func:`prepare_synthetic_dataset`, under ``root`` (default
    ``$D2REG_CACHE`` or ``~/.cache/d2reg``, resolved now). Returns the directory of the instance /
    semantic data set (the panoptic one is its ``synth_panoptic_*`` sibling).
    """
    out = synthetic_dataset_dir(root, num_train, num_val, image_size, seed)
    pan_paths = panoptic_dataset_paths(synthetic_panoptic_dataset_dir(root, num_train, num_val, image_size, seed))
    paths = dataset_paths(out)

    def generate(r=root):
        return generate_synthetic_dataset(r, num_train, num_val, image_size, seed)

    def generate_panoptic(r=root):
        return generate_synthetic_panoptic_dataset(r, num_train, num_val, image_size, seed)

    for name, (task, split) in SYNTH_DATASETS.items():
        p = paths[split]
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        _GENERATORS[name] = generate
        if task == "panoptic":
            _register_panoptic(name, pan_paths[split], generate_panoptic)
        elif task == "instances":
            DatasetCatalog.register(
                name, lambda p=p, n=name: (generate(), load_coco_json(p["json_file"], p["image_root"], n))[1]
            )
            meta = _SynthMetadata(name, generate, {k: p[k] for k in ("json_file", "image_root")})
            MetadataCatalog[name] = meta.set(
                thing_classes=list(SYNTH_THING_CLASSES),
                thing_colors=list(_THING_COLORS),
                thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SYNTH_THING_CLASSES))},
                evaluator_type="coco",
            )
        else:
            DatasetCatalog.register(
                name, lambda p=p: (generate(), load_sem_seg(p["sem_seg_root"], p["image_root"], "png", "jpg"))[1]
            )
            meta = _SynthMetadata(name, generate, {k: p[k] for k in ("image_root", "sem_seg_root")})
            MetadataCatalog[name] = meta.set(
                stuff_classes=list(SYNTH_STUFF_CLASSES),
                stuff_colors=list(_STUFF_COLORS),
                evaluator_type="sem_seg",
                ignore_label=255,
            )
    return out


def _register_panoptic(name: str, p: Dict[str, str], generate: Callable[[], str]) -> None:
    """Register one split as detectron2's ``register_coco_panoptic`` does ("standard" layout, same
    metadata keys), but with the files generated on first use (``register_coco_panoptic`` itself would
    store the paths as plain attributes, and its loader would not generate)."""
    classes = panoptic_metadata()
    _GENERATORS[name] = generate
    DatasetCatalog.register(name, lambda: (
        generate(), load_coco_panoptic_json(p["panoptic_json"], p["image_root"], p["panoptic_root"], classes))[1])
    meta = _SynthMetadata(name, generate, p)  # panoptic_root, panoptic_json, image_root, json_file
    MetadataCatalog[name] = meta.set(evaluator_type="coco_panoptic_seg", ignore_label=255, label_divisor=1000,
                                     **classes)


def prepare_synthetic_dataset(name: str) -> Optional[str]:
    """Generate the data set behind ``name`` if it is a synthetic one (no-op otherwise). Returns
    its directory, or None for other data sets."""
    gen = _GENERATORS.get(name)
    return gen() if gen is not None else None
