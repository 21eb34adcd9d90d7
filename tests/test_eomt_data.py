"""EoMT's data: the synthetic COCO panoptic set (detectron2's loader, panopticapi's PNG encoding) and
the three EoMT mappers (masks re-compose the ground truth; augmentation keeps image and targets
aligned; detectron2's train loader batches them)."""
from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import d2reg.data as data

SMALL = dict(num_train=6, num_val=3, image_size=96, seed=5)
MAPPERS = {
    "d2reg_synth_panoptic_train": data.EoMTPanopticDatasetMapper,
    "d2reg_synth_train": data.EoMTInstanceDatasetMapper,
    "d2reg_synth_sem_seg_train": data.EoMTSemanticDatasetMapper,
}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cache"))
    data.register_synthetic_datasets(root, **SMALL)
    yield root
    data.register_synthetic_datasets()


def _dicts(name):
    from detectron2.data import DatasetCatalog

    return DatasetCatalog.get(name)


def _png_ids(path):
    return data.rgb2id(np.asarray(Image.open(path).convert("RGB")))


# ------------------------------------------------------------------------------ the data set
def test_panoptic_set_registers_lazily_and_loads(registered):
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

    from d2reg.data.synthetic_panoptic import synthetic_panoptic_dataset_dir

    meta = MetadataCatalog.get("d2reg_synth_panoptic_val")
    pan_dir = synthetic_panoptic_dataset_dir(registered, **SMALL)
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.ignore_label == 255
    assert meta.stuff_classes == meta.thing_classes == list(data.SYNTH_PANOPTIC_CLASSES)  # detectron2 "standard"
    things, stuff = meta.thing_dataset_id_to_contiguous_id, meta.stuff_dataset_id_to_contiguous_id
    assert sorted(things.values()) + sorted(stuff.values()) == list(range(len(data.SYNTH_PANOPTIC_CLASSES)))
    assert not [d for d in os.listdir(registered) if "panoptic" in d and not d.startswith(".")]  # nothing yet
    with open(meta.panoptic_json) as f:  # reading a path generates the set
        pan = json.load(f)
    assert meta.panoptic_json.startswith(pan_dir) and os.path.isfile(os.path.join(pan_dir, "DONE"))
    cats = {c["id"]: c for c in pan["categories"]}
    assert {i for i, c in cats.items() if c["isthing"]} == set(things) and set(cats) == set(things) | set(stuff)

    dicts = _dicts("d2reg_synth_panoptic_val")
    again = load_coco_panoptic_json(meta.panoptic_json, meta.image_root, meta.panoptic_root, meta.as_dict())
    assert len(dicts) == SMALL["num_val"] and dicts == again
    n_stuff = 0
    for rec, ann in zip(dicts, pan["annotations"]):
        ids = _png_ids(rec["pan_seg_file_name"])
        img = np.asarray(Image.open(rec["file_name"]))
        assert img.shape == (96, 96, 3) and ids.shape == (96, 96)
        segs = {s["id"]: s for s in rec["segments_info"]}
        assert set(np.unique(ids)) - {0} == set(segs), "the PNG holds exactly the json's segments"
        raw = {s["id"]: s for s in ann["segments_info"]}
        for sid, s in segs.items():
            m = ids == sid
            ys, xs = np.nonzero(m)
            assert raw[sid]["area"] == m.sum()
            assert raw[sid]["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            assert s["isthing"] == bool(cats[raw[sid]["category_id"]]["isthing"])
            assert s["category_id"] == (things if s["isthing"] else stuff)[raw[sid]["category_id"]]
        stuff_cats = [s["category_id"] for s in segs.values() if not s["isthing"]]
        assert len(stuff_cats) == len(set(stuff_cats)), "one segment per stuff class"
        n_stuff += len(stuff_cats)
        assert any(s["isthing"] for s in segs.values())
    assert n_stuff >= SMALL["num_val"]
    # the things also as COCO instances (json_file), with the PNG's areas
    with open(meta.json_file) as f:
        inst = json.load(f)
    thing_areas = sorted(s["area"] for a in pan["annotations"] for s in a["segments_info"]
                         if s["category_id"] in things)
    assert sorted(int(a["area"]) for a in inst["annotations"]) == thing_areas
    # detectron2's evaluators accept the metadata (COCOPanopticEvaluator needs panopticapi only to evaluate)
    from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator

    COCOPanopticEvaluator("d2reg_synth_panoptic_val", output_dir=None)
    assert len(COCOEvaluator("d2reg_synth_panoptic_val", use_fast_impl=False)._coco_api.getCatIds()) == 3


def test_panoptic_generation_is_deterministic(tmp_path):
    kw = dict(num_train=3, num_val=1, image_size=64, seed=9)
    a = data.generate_synthetic_panoptic_dataset(str(tmp_path / "a"), **kw)
    b = data.generate_synthetic_panoptic_dataset(str(tmp_path / "b"), **kw)
    for sub in ("annotations", "panoptic/training", "images/validation"):
        cmp = filecmp.dircmp(os.path.join(a, sub), os.path.join(b, sub))
        assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    ids = np.arange(0, 3 * 256 ** 3, 4099, dtype=np.int64)[None]
    assert (data.rgb2id(data.id2rgb(ids)) == ids % 256 ** 3).all()


# ------------------------------------------------------------------------------ the mappers
def _eval_mapper(name):
    return MAPPERS[name](is_train=False, augmentations=[], image_format="RGB", return_targets=True)


def _check_common(out, rec, size):
    h, w = size
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, h, w)
    inst = out["instances"]
    k = len(inst)
    assert inst.image_size == (h, w) and inst.gt_classes.dtype == torch.int64 and inst.gt_classes.shape == (k,)
    assert inst.gt_masks.tensor.shape == (k, h, w) and inst.gt_masks.tensor.dtype == torch.bool
    assert inst.gt_masks.tensor.flatten(1).any(1).all(), "no empty masks"
    assert (out["height"], out["width"]) == (96, 96) and out.get("image_id") == rec.get("image_id")
    assert out["file_name"] == rec["file_name"]
    return inst.gt_classes.numpy(), inst.gt_masks.tensor.numpy()


def test_panoptic_mapper_recomposes_png(registered):
    for rec in _dicts("d2reg_synth_panoptic_train"):
        rec = dict(rec, height=96, width=96)
        out = _eval_mapper("d2reg_synth_panoptic_train")(rec)
        classes, masks = _check_common(out, rec, (96, 96))
        assert (out["image"].permute(1, 2, 0).numpy() == np.asarray(Image.open(rec["file_name"]))).all()
        ids = _png_ids(rec["pan_seg_file_name"])
        segs = rec["segments_info"]
        assert masks.sum(0).max() == 1 and len(classes) == len(segs)
        seg_ids = np.array([s["id"] for s in segs])
        assert (np.where(masks.any(0), seg_ids[masks.argmax(0)], 0) == ids).all()
        assert list(classes) == [s["category_id"] for s in segs]
    # crowd segments are dropped, as the official code does
    crowd = dict(rec, segments_info=[dict(s, iscrowd=int(i == 0)) for i, s in enumerate(segs)])
    out = _eval_mapper("d2reg_synth_panoptic_train")(crowd)
    assert len(out["instances"]) == len(segs) - 1 and not (out["instances"].gt_masks.tensor & torch.from_numpy(
        ids == segs[0]["id"])).any()
    plain = data.EoMTPanopticDatasetMapper(is_train=False, augmentations=[])(rec)  # evaluation: image only
    assert "instances" not in plain and "segments_info" not in plain and plain["image"].shape == (3, 96, 96)


def test_instance_mapper_recomposes_coco(registered):
    from detectron2.data import MetadataCatalog
    from pycocotools.coco import COCO

    coco = COCO(MetadataCatalog.get("d2reg_synth_train").json_file)
    for rec in _dicts("d2reg_synth_train"):
        classes, masks = _check_common(_eval_mapper("d2reg_synth_train")(rec), rec, (96, 96))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=rec["image_id"]))
        assert len(anns) == len(masks) > 0
        for a, c, m in zip(anns, classes, masks):  # pycocotools' own rasterisation, contiguous ids
            assert c == a["category_id"] - 1 and (m == coco.annToMask(a).astype(bool)).all()
    rle = dict(rec, annotations=[dict(a, segmentation=coco.annToRLE(anns[0])) for a in rec["annotations"][:1]]
               + [dict(a, iscrowd=1) for a in rec["annotations"][1:]])
    _, m = _check_common(_eval_mapper("d2reg_synth_train")(rle), rec, (96, 96))  # RLE read; crowd dropped
    assert len(m) == 1 and (m[0] == masks[0]).all()


def test_semantic_mapper_recomposes_labels(registered, tmp_path):
    for rec in _dicts("d2reg_synth_sem_seg_train"):
        label = np.asarray(Image.open(rec["sem_seg_file_name"])).astype(np.int64)
        label[:8, :8] = 255  # an ignored corner
        path = str(tmp_path / os.path.basename(rec["sem_seg_file_name"]))
        Image.fromarray(label.astype(np.uint8)).save(path)
        rec = dict(rec, height=96, width=96, sem_seg_file_name=path)
        out = _eval_mapper("d2reg_synth_sem_seg_train")(rec)
        classes, masks = _check_common(out, rec, (96, 96))
        assert (out["sem_seg"].numpy() == label).all() and 255 not in classes
        assert masks.sum(0).max() == 1 and list(classes) == sorted(set(np.unique(label)) - {255})
        assert (np.where(masks.any(0), classes[masks.argmax(0)], 255) == label).all()


@pytest.mark.parametrize("name", list(MAPPERS))
def test_train_mode_keeps_image_and_targets_aligned(registered, name):
    from detectron2.data import transforms as T

    rec = _dicts(name)[0]
    ref = _eval_mapper(name)(rec)
    flip = MAPPERS[name](is_train=True, augmentations=[T.RandomFlip(prob=1.0)])(rec)
    assert (flip["image"] == ref["image"].flip(-1)).all()
    assert (flip["instances"].gt_masks.tensor == ref["instances"].gt_masks.tensor.flip(-1)).all()
    task = MAPPERS[name].task
    augs = data.build_eomt_augmentation(task, (48, 64), True)
    assert [type(a).__name__ for a in augs][-3:] == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    assert isinstance(augs[0], data.EoMTColorJitter) == (task == "semantic")
    mapper = MAPPERS[name](is_train=True, augmentations=augs)
    np.random.seed(0)
    for rec in _dicts(name):
        out = mapper(rec)
        classes, masks = _check_common(out, rec, (48, 64))
        assert len(classes) > 0
        if task != "instance":
            assert masks.sum(0).max() == 1, "segments stay disjoint"
        if task == "semantic":
            sem = out["sem_seg"].numpy()
            assert (np.where(masks.any(0), classes[masks.argmax(0)], 255) == sem).all()


def test_crop_without_objects_gives_empty_target(registered):
    """A crop that keeps no shape: re-drawn ``max_retries`` times, then an empty target (K = 0)."""
    from detectron2.data import transforms as T

    rec = _dicts("d2reg_synth_train")[0]
    union = _eval_mapper("d2reg_synth_train")(rec)["instances"].gt_masks.tensor.any(0).numpy()
    y, x = next((y, x) for y in range(0, 88, 4) for x in range(0, 88, 4) if not union[y:y + 8, x:x + 8].any())
    crop = T.CropTransform(x, y, 8, 8, 96, 96)
    out = data.EoMTInstanceDatasetMapper(is_train=True, augmentations=[crop], max_retries=2)(rec)
    assert out["image"].shape == (3, 8, 8) and len(out["instances"]) == 0
    assert out["instances"].gt_masks.tensor.shape == (0, 8, 8) and out["instances"].gt_classes.shape == (0,)


def test_color_jitter_matches_torchvision():
    """Each step of EoMTColorJitter equals torchvision's functional op (the official code's) on uint8."""
    from torchvision.transforms.v2 import functional as F

    from d2reg.data.eomt_mapper import _color_ops

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    t = torch.from_numpy(img).permute(2, 0, 1)
    ops = {"brightness": (F.adjust_brightness, 1.12), "contrast": (F.adjust_contrast, 0.7),
           "saturation": (F.adjust_saturation, 1.4), "hue": (F.adjust_hue, 15 / 360)}
    for name, (fn, f) in ops.items():
        ours = _color_ops(img, [(name, f * 360 if name == "hue" else f)], bgr=False).astype(int)
        ref = fn(t, f).permute(1, 2, 0).numpy().astype(int)
        assert np.abs(ours - ref).max() <= 1, name  # rounding of the grey reference
    bgr = _color_ops(img[..., ::-1], [("saturation", 1.4)], bgr=True)
    assert (bgr[..., ::-1] == _color_ops(img, [("saturation", 1.4)], bgr=False)).all()
    np.random.seed(1)
    jitter = data.EoMTColorJitter()
    same = [(jitter.get_transform(img).apply_image(img) == img).all() for _ in range(320)]
    assert 2 <= sum(same) <= 25  # each of the 5 ops is applied with probability 0.5: none in 1/32


def test_from_config_and_train_loader(registered):
    from detectron2.config import get_cfg
    from detectron2.data import build_detection_train_loader

    cfg = get_cfg()
    with pytest.raises(KeyError, match="add_eomt_input_config"):
        data.EoMTPanopticDatasetMapper(cfg, True)
    data.add_eomt_input_config(cfg)
    cfg.INPUT.IMAGE_SIZE = 64
    cfg.INPUT.FORMAT = "RGB"
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    for name, cls in MAPPERS.items():
        cfg.DATASETS.TRAIN = (name,)
        mapper = cls(cfg, True)
        assert [type(a).__name__ for a in mapper.augmentations.augs][-1] == "FixedSizeCrop"
        batch = next(iter(build_detection_train_loader(cfg, mapper=mapper)))
        assert len(batch) == 2
        for b in batch:
            assert b["image"].shape == (3, 64, 64) and b["instances"].gt_masks.tensor.shape[1:] == (64, 64)
            assert len(b["instances"]) > 0
