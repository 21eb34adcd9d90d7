"""Train / evaluate a d2reg model from a LazyConfig ``.py`` (detectron2's lazyconfig_train_net.py).

    python tools/lazyconfig_train_net.py --config-file configs/demo/mask_rcnn_vit_tiny_synth.py \
        train.output_dir=out train.max_iter=10
    python tools/lazyconfig_train_net.py --config-file ... --num-gpus 8 [--resume]
    python tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=out/model_final.pth

``train.init_checkpoint`` may be a detectron2 checkpoint or an official / timm / Hugging Face DINOv2
file (loaded into the backbone); a file matching none of the model's weights is an error.
"""
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, launch

import d2reg.data  # noqa: F401  (registers the synthetic data sets)
from d2reg.engine import D2RegCheckpointer, create_ddp_model, do_test, do_train
from d2reg.model_zoo import resolve_config_file


def main(args):
    """detectron2's worker (run by ``launch`` in every process): parsed ``args`` -> train or evaluate."""
    args.config_file = resolve_config_file(args.config_file)
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    if str(cfg.train.get("device", "cuda")).startswith("cuda") and not torch.cuda.is_available():
        cfg.train.device = "cpu"  # no GPU here: run on the CPU
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        D2RegCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    return do_train(args, cfg)


def invoke_main(argv=None):
    """Command line entry (``d2reg-lazy-train``): parse ``argv`` and launch :func:`main`."""
    args = default_argument_parser().parse_args(argv)
    return launch(
        main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
        dist_url=args.dist_url, args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
