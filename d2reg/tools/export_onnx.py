"""Export a d2reg model to ONNX and verify it with onnxruntime against PyTorch.

    python tools/export_onnx.py --config-file configs/demo/mask_rcnn_vit_tiny_synth.yaml --output out/onnx \\
        --backbone-only MODEL.WEIGHTS out/model_final.pth          # -> out/onnx/backbone.onnx (p2 ... p6)
    python tools/export_onnx.py --config-file configs/demo/mask_rcnn_vit_tiny_synth.py --output out/onnx \\
        train.init_checkpoint=out/model_final.pth                   # -> out/onnx/model.onnx (boxes, masks ...)

--backbone-only: input ``images`` (N, 3, H, W) float32 as the backbone receives it (normalised, padded),
one output per feature named after it; dynamic N, H, W unless --static H W. Without it: the whole
detectron2 model (R-CNN or semantic segmentation) through detectron2's TracingAdapter, input ``image``
(3, H, W) 0-255 in the model's colour format. After exporting, both graphs run in onnxruntime and
PyTorch at three sizes the export did not trace (square, non-square, sides not multiples of 32) and
the largest differences are printed; the exit status is 1 when any output differs beyond tolerance.
An EoMT config exports its network (-> eomt.onnx: ``images`` (N, 3, H, W) normalised -> ``mask_logits``
(N, Q, H/4, W/4), ``class_logits`` (N, Q, C+1); masked attention off, as at inference; dynamic N, H, W).
"""
import argparse
import os
import sys

from d2reg import EoMT
from d2reg.export import (
    DEFAULT_BACKBONE_OPSET,
    DEFAULT_MODEL_OPSET,
    EoMTLogits,
    default_verify_sizes,
    dynamic_size_range,
    export_backbone,
    export_model,
    format_report,
    model_from_config,
    verify_backbone,
    verify_model,
)
from d2reg.model_zoo import resolve_config_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True,
                   help="YACS .yaml or LazyConfig .py: a file, or a packaged name (d2reg.model_zoo)")
    p.add_argument("--output", required=True, help="folder for backbone.onnx / model.onnx")
    p.add_argument("--backbone-only", action="store_true", help="export the backbone (with its pyramid) only")
    p.add_argument("--static", nargs=2, type=int, metavar=("H", "W"), help="fixed input size instead of dynamic")
    p.add_argument("--opset", type=int,
                   help=f"ONNX opset (default: backbone {DEFAULT_BACKBONE_OPSET}, model {DEFAULT_MODEL_OPSET})")
    p.add_argument("--verify-sizes", nargs="+", metavar="HxW", help="sizes to verify at (default: three unseen)")
    p.add_argument("--no-verify", action="store_true", help="export only")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (YACS KEY VALUE / LazyConfig key=value)")
    return p


def _sizes(args, default):
    if args.static:
        return [tuple(args.static)]
    if args.verify_sizes:
        return [tuple(int(v) for v in s.lower().split("x")) for s in args.verify_sizes]
    return default


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    model = model_from_config(resolve_config_file(args.config_file), args.opts)
    static = tuple(args.static) if args.static else None
    eomt = isinstance(model, EoMT)
    if eomt:  # the network (masked attention off, as at inference); post-processing stays in Python
        network = EoMTLogits(model)
        result = export_backbone(network, os.path.join(args.output, "eomt.onnx"), static_size=static,
                                 opset=args.opset or DEFAULT_BACKBONE_OPSET)
        p = network.patch
        sizes = _sizes(args, [(8 * p, 8 * p), (6 * p, 10 * p), (6 * p + 5, 9 * p - 3)])
    elif args.backbone_only:
        backbone = model.backbone
        result = export_backbone(backbone, os.path.join(args.output, "backbone.onnx"), static_size=static,
                                 opset=args.opset or DEFAULT_BACKBONE_OPSET)
        stride = max(s.stride for s in backbone.output_shape().values())
        sizes = _sizes(args, default_verify_sizes(dynamic_size_range(backbone)[0], stride))
    else:
        result = export_model(model, os.path.join(args.output, "model.onnx"), static=static is not None,
                              example_size=static or (320, 480), opset=args.opset or DEFAULT_MODEL_OPSET)
        sizes = _sizes(args, [(288, 288), (256, 416), (301, 397)])
    span = f"sides {result.size_range[0]}-{result.size_range[1]} px" if result.size_range else ""
    print(f"wrote {result.path}: inputs {result.input_names}, outputs {result.output_names}, opset {result.opset}, "
          f"{'dynamic' if result.dynamic else 'static'} {span}".rstrip())
    for note in result.notes:
        print("NOTE:", note)
    if args.no_verify:
        return 0
    if eomt:
        rows = verify_backbone(network, result.path, sizes)
    elif args.backbone_only:
        rows = verify_backbone(model.backbone, result.path, sizes)
    else:
        rows = verify_model(model, result.path, sizes)
    print(format_report(rows, "onnxruntime vs PyTorch:"))
    bad = [r for r in rows if not r.ok]
    print("verified: all outputs match" if not bad else f"MISMATCH in {len(bad)} of {len(rows)} outputs")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
