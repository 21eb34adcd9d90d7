"""The embedded synthetic data set: deterministic, lazily generated, in the real COCO / ADE20k
layouts that detectron2's own loaders and evaluators read."""
from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

import d2reg.data as data

SMALL = dict(num_train=6, num_val=3, image_size=96, seed=11)


@pytest.fixture
def registered(tmp_path):
    root = str(tmp_path / "cache")
    out = data.register_synthetic_datasets(root, **SMALL)
    yield root, out
    data.register_synthetic_datasets()


def test_names_and_metadata(registered):
    from detectron2.data import MetadataCatalog

    _, out = registered
    for split in ("train", "val"):
        m = MetadataCatalog.get(f"d2reg_synth_{split}")
        assert m.evaluator_type == "coco" and m.thing_classes == list(data.SYNTH_THING_CLASSES)
        s = MetadataCatalog.get(f"d2reg_synth_sem_seg_{split}")
        assert s.evaluator_type == "sem_seg" and s.ignore_label == 255
        assert len(s.stuff_classes) == data.SYNTH_NUM_SEM_SEG_CLASSES == 4
    assert not os.path.exists(out)  # registering (and reading names, classes) generates nothing
    json_file = MetadataCatalog.get("d2reg_synth_val").json_file  # a path in the metadata: valid once read
    assert json_file.startswith(out) and json_file.endswith("instances_val.json") and os.path.isfile(json_file)
    assert os.path.isdir(MetadataCatalog.get("d2reg_synth_sem_seg_train").sem_seg_root)


def test_evaluators_first(registered):
    """detectron2's evaluators work on a data set nothing has generated yet, whatever comes first:
    COCOEvaluator opens ``json_file`` and SemSegEvaluator lists the data set when constructed."""
    from detectron2.evaluation import COCOEvaluator, SemSegEvaluator

    _, out = registered
    assert not os.path.exists(out)
    COCOEvaluator("d2reg_synth_val", use_fast_impl=False)  # reads json_file (pycocotools) here
    assert os.path.isfile(os.path.join(out, "annotations", "instances_val.json"))
    sem = SemSegEvaluator("d2reg_synth_sem_seg_val", distributed=False, sem_seg_loading_fn=data.load_sem_seg_gt)
    assert len(sem.input_file_to_gt_file) == SMALL["num_val"]


def test_lazy_generation_and_layouts(registered):
    from detectron2.data import DatasetCatalog
    from pycocotools.coco import COCO

    _, out = registered
    dicts = DatasetCatalog.get("d2reg_synth_train")  # first use generates
    assert os.path.isfile(os.path.join(out, "DONE")) and len(dicts) == SMALL["num_train"]
    coco = COCO(os.path.join(out, "annotations", "instances_val.json"))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(data.SYNTH_THING_CLASSES)
    sem = DatasetCatalog.get("d2reg_synth_sem_seg_val")
    assert len(sem) == SMALL["num_val"]
    for rec in sem:
        img = np.asarray(Image.open(rec["file_name"]))
        label = np.asarray(Image.open(rec["sem_seg_file_name"]))
        assert img.shape == (96, 96, 3) and label.shape == (96, 96)
        assert set(np.unique(label)) <= set(range(data.SYNTH_NUM_SEM_SEG_CLASSES))
        # instance masks (polygons of the visible parts) agree with the semantic labels
        image_id = next(i["id"] for i in coco.dataset["images"] if rec["file_name"].endswith(i["file_name"]))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert anns, "every image has shapes"
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            agree = (label[m] == a["category_id"]).mean()  # category ids 1..3 == semantic labels 1..3
            assert agree > 0.9 and abs(m.sum() - a["area"]) < 0.25 * a["area"] + 10


def test_deterministic_from_seed(tmp_path):
    a = data.generate_synthetic_dataset(str(tmp_path / "a"), **SMALL)
    b = data.generate_synthetic_dataset(str(tmp_path / "b"), **SMALL)
    for sub in ("annotations", "annotations_detectron2/training", "images/validation"):
        cmp = filecmp.dircmp(os.path.join(a, sub), os.path.join(b, sub))
        assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    c = data.generate_synthetic_dataset(str(tmp_path / "c"), **dict(SMALL, seed=12))
    with open(os.path.join(a, "annotations", "instances_train.json")) as f1, \
            open(os.path.join(c, "annotations", "instances_train.json")) as f2:
        assert json.load(f1)["annotations"] != json.load(f2)["annotations"]
    assert data.generate_synthetic_dataset(str(tmp_path / "a"), **SMALL) == a  # cached: no rewrite


def test_scenes_have_all_classes_and_no_fully_hidden_shape():
    classes, occluded = set(), 0
    for i in range(40):
        img, inst, cls = data.render_scene(np.random.default_rng(i), 128)
        assert img.dtype == np.uint8 and len(cls) >= 1
        classes |= set(cls)
        full = [(inst == k).sum() for k in range(len(cls))]
        occluded += any(f == 0 for f in full)  # never fully hidden
    assert classes == {0, 1, 2} and occluded == 0
