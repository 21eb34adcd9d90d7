"""`make demo`: the whole d2reg loop on a CPU, nothing downloaded, within a wall-clock budget.

1. generates the synthetic shapes data set on first use (``d2reg.data``; cached under $D2REG_CACHE
   or ~/.cache/d2reg),
2. trains a tiny ViT-reg Mask R-CNN (``configs/demo/mask_rcnn_vit_tiny_synth.yaml``; ``--family
   dinov3``: ``mask_rcnn_dinov3_tiny_synth.yaml``) from random init, or from ``--weights`` (an
   official / timm / HF DINOv2 or DINOv3 file: its first 4 blocks) with detectron2's trainer,
3. evaluates on the held-out images with ``COCOEvaluator`` (box and mask AP) — or, with
   ``--task sem_seg``, a semantic FPN with ``SemSegEvaluator`` (mIoU), or, with ``--task panoptic``, an
   EoMT (``configs/demo/eomt_vit_tiny_synth.yaml``) on the synthetic panoptic scenes (PQ),
4. writes ``<output-dir>/predictions.png`` (ground truth on top, predictions below; detectron2's
   ``Visualizer``).

Time budget (``--time-budget`` minutes, all four steps together, counted from the start of this
script): after a few warm-up iterations the step time is measured and the run is planned to fit —
at most the config's ``SOLVER.MAX_ITER`` iterations (the tuned recipe), fewer on a slower machine
(the LR milestones move with the plan); the plan and the expected finish are printed, and so is a
note when the budget cut the run short (AP is then lower than the recipe's). ``--time-budget 0``
runs exactly ``SOLVER.MAX_ITER`` iterations.

Any further arguments are config overrides, e.g. ``SOLVER.MAX_ITER 100``.
"""
import time

_START = time.time()  # the budget counts imports too

import argparse  # noqa: E402

import torch  # noqa: E402

import d2reg.data  # noqa: E402
from d2reg.checkpoint import read_checkpoint_info  # noqa: E402
from d2reg.demo import DemoTrainer, TimeBudget, cpu_model, demo_cfg, draw_predictions  # noqa: E402
from d2reg.model_zoo import get_config_file, resolve_config_file  # noqa: E402

DEMO_CONFIGS = {
    ("instance", "dinov2"): "mask_rcnn_vit_tiny_synth.yaml",
    ("sem_seg", "dinov2"): "sem_fpn_vit_tiny_synth.yaml",
    ("instance", "dinov3"): "mask_rcnn_dinov3_tiny_synth.yaml",
    ("panoptic", "dinov2"): "eomt_vit_tiny_synth.yaml",
}
METRIC = {"instance": "AP", "sem_seg": "mIoU", "panoptic": "PQ"}
DEFAULT_BUDGET_MIN = 6.5  # >= 30% margin to 10 minutes, with room for the plan's error
# What follows training (evaluation of the 64 validation images, the picture), in training steps of the same
# machine plus a fixed part: it took 2.6 and 5.4 steps in two runs on a loaded AMD EPYC (load moves it).
RESERVE_STEPS = 4.0
RESERVE_S = 15.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("instance", "sem_seg", "panoptic"), default="instance")
    parser.add_argument("--family", choices=("dinov2", "dinov3"), default=None,
                        help="backbone family (default: the --weights file's, else dinov2)")
    parser.add_argument("--config-file", default="",
                        help="a file or packaged config name (default: demo/<the task's config>)")
    parser.add_argument("--weights", default="",
                        help="local DINOv2 or DINOv3 checkpoint (official/timm/HF); default random init")
    parser.add_argument("--output-dir", default="", help="default output/demo_<task>")
    parser.add_argument("--time-budget", type=float, default=DEFAULT_BUDGET_MIN, metavar="MINUTES",
                        help=f"wall-clock budget of the whole demo (default {DEFAULT_BUDGET_MIN}); 0: no budget")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    start = _START if argv is None else time.time()  # called as a function (tests): from now
    cpu_start = time.process_time()

    family = args.family or (read_checkpoint_info(args.weights).family if args.weights else "dinov2")
    if not args.config_file and (args.task, family) not in DEMO_CONFIGS:
        parser.error(f"no {args.task} demo for the {family} family (available: {sorted(DEMO_CONFIGS)}).")
    config_file = (resolve_config_file(args.config_file) if args.config_file
                   else get_config_file(f"demo/{DEMO_CONFIGS[args.task, family]}"))
    cfg = demo_cfg(config_file, args.weights or None, args.output_dir or None, args.opts)
    cpu = f"{cpu_model()}, {torch.get_num_threads()} threads"
    print(f"[demo] CPU: {cpu}")
    t = time.time()
    root = d2reg.data.prepare_synthetic_dataset(cfg.DATASETS.TRAIN[0])
    print(f"[demo] synthetic data set: {root} ({time.time() - t:.0f} s)")
    d2 = cfg.MODEL.D2REG
    print(f"[demo] model: {d2.FAMILY} ViT {d2.EMBED_DIM or d2.ARCH}-dim x {d2.DEPTH or 'all'} blocks, "
          f"{d2.NUM_REGISTER_TOKENS} registers, patch {d2.PATCH_SIZE}; "
          f"{'weights ' + args.weights if args.weights else 'RANDOM INIT'}; "
          f"up to {cfg.SOLVER.MAX_ITER} iterations x {cfg.SOLVER.IMS_PER_BATCH} images on {cfg.MODEL.DEVICE}")

    budget = None
    if args.time_budget > 0:
        budget = TimeBudget(start + 60 * args.time_budget, reserve_steps=RESERVE_STEPS, reserve_s=RESERVE_S)
        print(f"[demo] time budget {args.time_budget:g} min: the step time is measured over iterations "
              f"{budget.measure_from}-{budget.first_plan - 1}, then the run is planned to fit")
    trainer = DemoTrainer(cfg, budget=budget)
    trainer.resume_or_load(resume=False)
    train_start = time.time()
    results = trainer.train()  # evaluates once at the end (TEST.EVAL_PERIOD 0)
    train_eval = time.time() - train_start
    png = draw_predictions(cfg, trainer.model, cfg.DATASETS.TEST[0], f"{cfg.OUTPUT_DIR}/predictions.png")

    res = results[cfg.DATASETS.TEST[0]] if cfg.DATASETS.TEST[0] in results else results
    total, cpu_time = time.time() - start, time.process_time() - cpu_start
    print("\n[demo] ============================================================")
    if args.task == "instance":
        print(f"[demo] box AP {res['bbox']['AP']:.1f} (AP50 {res['bbox']['AP50']:.1f}) | "
              f"mask AP {res['segm']['AP']:.1f} (AP50 {res['segm']['AP50']:.1f})  on {cfg.DATASETS.TEST[0]}")
    elif args.task == "panoptic":
        pq = res["panoptic_seg"]
        print(f"[demo] PQ {pq['PQ']:.1f} (SQ {pq['SQ']:.1f}, RQ {pq['RQ']:.1f}) | things PQ {pq['PQ_th']:.1f} | "
              f"stuff PQ {pq['PQ_st']:.1f}  on {cfg.DATASETS.TEST[0]}")
    else:
        print(f"[demo] mIoU {res['sem_seg']['mIoU']:.1f} | pixel accuracy {res['sem_seg']['pACC']:.1f}  "
              f"on {cfg.DATASETS.TEST[0]}")
    step = f", {budget.step_time:.2f} s/it" if budget is not None and budget.step_time else ""
    print(f"[demo] {trainer.iter} of {cfg.SOLVER.MAX_ITER} iterations{step}; train + eval {train_eval / 60:.1f} min, "
          f"total {total / 60:.1f} min wall ({cpu_time / 60:.1f} min CPU time in this process) on {cpu}")
    if budget is not None:
        over = total - 60 * args.time_budget
        print(f"[demo] budget {args.time_budget:g} min: " + (f"EXCEEDED by {over:.0f} s" if over > 0 else "kept"))
    if trainer.iter < cfg.SOLVER.MAX_ITER:
        print(f"[demo] NOTE: the time budget allowed {trainer.iter} of the tuned {cfg.SOLVER.MAX_ITER} iterations "
              f"on this machine, so {METRIC[args.task]} is lower than the recipe's "
              f"(raise --time-budget, or --time-budget 0 for the full run)")
    print(f"[demo] predictions: {png}")
    return results


def cli(argv=None) -> int:
    """Console script entry (``d2reg-demo``): :func:`main`, exit status 0 (``main`` returns the results)."""
    main(argv)
    return 0


if __name__ == "__main__":
    main()
