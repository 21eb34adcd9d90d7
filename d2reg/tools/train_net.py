"""Train / evaluate a d2reg model from a YACS config (detectron2's tools/train_net.py, d2reg flavour).

    python tools/train_net.py --config-file configs/demo/mask_rcnn_vit_tiny_synth.yaml OUTPUT_DIR out
    python tools/train_net.py --config-file ... --num-gpus 8                      # one machine
    python tools/train_net.py --config-file ... --num-machines 2 --machine-rank 0 \
        --num-gpus 8 --dist-url tcp://<host0>:29500                                # multi-node
    python tools/train_net.py --config-file ... --resume                          # continue OUTPUT_DIR
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth

``MODEL.WEIGHTS`` may be a detectron2 checkpoint or an official / timm / Hugging Face DINOv2 file
(loaded into the backbone, patch 14 -> 16); a file matching none of the model's weights is an error.
Optimizer, layer-wise lr decay, evaluators and exact resume live in ``d2reg.engine``.
"""
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import d2reg.data  # noqa: F401  (registers the synthetic data sets)
from d2reg.engine import D2RegCheckpointer, D2RegTrainer, setup_cfg
from d2reg.model_zoo import resolve_config_file


def main(args):
    """detectron2's worker (run by ``launch`` in every process): parsed ``args`` -> train or evaluate."""
    args.config_file = resolve_config_file(args.config_file)
    cfg = setup_cfg(args)
    if args.eval_only:
        model = D2RegTrainer.build_model(cfg)
        D2RegCheckpointer(model, save_dir=cfg.OUTPUT_DIR, patch_resize=cfg.MODEL.D2REG.PATCH_RESIZE).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = D2RegTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = D2RegTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main(argv=None):
    """Command line entry (``d2reg-train``): parse ``argv`` (default ``sys.argv[1:]``) and launch :func:`main`."""
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    return launch(
        main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
        dist_url=args.dist_url, args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
