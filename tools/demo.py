#!/usr/bin/env python
"""`make demo`: the whole d2reg loop on a CPU, nothing downloaded.

1. generates the synthetic shapes data set on first use (``d2reg.data``; cached under $D2REG_CACHE
   or ~/.cache/d2reg),
2. trains a tiny ViT-reg Mask R-CNN (``configs/demo/mask_rcnn_vit_tiny_synth.yaml``) from random
   init, or from ``--weights`` (an official / timm / HF DINOv2 file: its first 4 blocks) with
   detectron2's trainer,
3. evaluates on the held-out images with ``COCOEvaluator`` (box and mask AP) — or, with
   ``--task sem_seg``, a semantic FPN with ``SemSegEvaluator`` (mIoU),
4. writes ``<output-dir>/predictions.png`` (ground truth on top, predictions below; detectron2's
   ``Visualizer``).

Any further arguments are config overrides, e.g. ``SOLVER.MAX_ITER 100``.
"""
import argparse
import time

import torch

import d2reg.data
from d2reg.engine import D2RegTrainer
from d2reg.engine.demo import demo_cfg, draw_predictions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("instance", "sem_seg"), default="instance")
    parser.add_argument("--weights", default="", help="local DINOv2 checkpoint (official/timm/HF); default random init")
    parser.add_argument("--output-dir", default="", help="default output/demo_<task>")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)

    start, cpu_start = time.perf_counter(), time.process_time()
    cfg = demo_cfg(args.task, args.weights or None, args.output_dir or None, args.opts)
    root = d2reg.data.prepare_synthetic_dataset(cfg.DATASETS.TRAIN[0])
    print(f"[demo] synthetic data set: {root}")
    d2 = cfg.MODEL.D2REG
    print(f"[demo] model: ViT {d2.EMBED_DIM or d2.ARCH}-dim x {d2.DEPTH or 'all'} blocks, {d2.NUM_REGISTER_TOKENS} "
          f"registers, patch {d2.PATCH_SIZE}; {'weights ' + args.weights if args.weights else 'RANDOM INIT'}; "
          f"{cfg.SOLVER.MAX_ITER} iterations x {cfg.SOLVER.IMS_PER_BATCH} images on {cfg.MODEL.DEVICE} "
          f"({torch.get_num_threads()} threads)")

    trainer = D2RegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    train_start = time.perf_counter()
    results = trainer.train()  # evaluates once at the end (TEST.EVAL_PERIOD 0)
    elapsed = time.perf_counter() - train_start
    png = draw_predictions(cfg, trainer.model, cfg.DATASETS.TEST[0], f"{cfg.OUTPUT_DIR}/predictions.png")

    res = results[cfg.DATASETS.TEST[0]] if cfg.DATASETS.TEST[0] in results else results
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print("\n[demo] ============================================================")
    if args.task == "instance":
        print(f"[demo] box AP {res['bbox']['AP']:.1f} (AP50 {res['bbox']['AP50']:.1f}) | "
              f"mask AP {res['segm']['AP']:.1f} (AP50 {res['segm']['AP50']:.1f})  on {cfg.DATASETS.TEST[0]}")
    else:
        print(f"[demo] mIoU {res['sem_seg']['mIoU']:.1f} | pixel accuracy {res['sem_seg']['pACC']:.1f}  "
              f"on {cfg.DATASETS.TEST[0]}")
    print(f"[demo] train + eval {elapsed / 60:.1f} min, total {total / 60:.1f} min wall "
          f"({cpu / 60:.1f} min CPU time in this process); predictions: {png}")
    return results


if __name__ == "__main__":
    main()
