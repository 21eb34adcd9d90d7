"""Predict with a trained d2reg model: pictures and machine-readable results for images, folders, globs
and videos (the API: :mod:`d2reg.predict`; the files: :mod:`d2reg.predict_outputs`).

    python tools/predict.py --config-file configs/demo/mask_rcnn_vit_tiny_synth.yaml \\
        --input imgs/ clip.mp4 --output out/pred MODEL.WEIGHTS output/demo_instance/model_final.pth
    d2reg-predict --config-file demo/mask_rcnn_vit_tiny_synth.py --input "imgs/*.jpg" --output out/pred \\
        train.init_checkpoint=output/demo_instance_lazy/model_final.pth

--config-file: a YACS .yaml or LazyConfig .py file, or a packaged config name (d2reg.model_zoo).
Config overrides go last: YACS ``KEY VALUE`` pairs, LazyConfig ``key=value``; the weights are
``MODEL.WEIGHTS`` / ``train.init_checkpoint`` (a missing file stops before anything is written).
Writes under --output: <image>.png (picture), images.json + instances.json (COCO results, RLE masks),
sem_seg/<image>.png (label map), panoptic/<image>.png + panoptic.json (panopticapi format),
<video>.mp4 (annotated). An unreadable image (or video) is reported and skipped (exit status 0), or with
``--on-error stop`` stops the run (exit status 1; the results of the images before it are written).
Exit status 2: bad arguments, config or weights.
"""
import argparse
import sys

from d2reg.predict import PredictError, build_predictor, collect_inputs, predict_images, predict_video


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="YACS .yaml / LazyConfig .py file, or a packaged name")
    p.add_argument("--input", nargs="+", required=True, help="images, folders, glob patterns or videos")
    p.add_argument("--output", required=True, help="folder for the results")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="instances below it are dropped")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=1, help="images (or video frames) per forward pass")
    p.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                   help="an unreadable image: report and skip it (default), or stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (YACS KEY VALUE / LazyConfig key=value)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        images, videos = collect_inputs(args.input)
        predictor = build_predictor(args.config_file, args.opts, device=args.device)
    except (PredictError, FileNotFoundError, ValueError) as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    kw = dict(confidence_threshold=args.confidence_threshold, batch_size=args.batch_size,
              progress=not args.no_progress)
    try:
        if images:
            summary = predict_images(predictor, images, args.output, on_error=args.on_error, **kw)
            for path, reason in summary.skipped:
                print(f"predict: skipped {path}: {reason}", file=sys.stderr)
            print(summary.line(args.output))
        for video in videos:
            try:
                summary = predict_video(predictor, video, args.output, **kw)
            except PredictError as e:
                if args.on_error == "stop":
                    raise
                print(f"predict: skipped {video}: {e}", file=sys.stderr)
                continue
            print(f"{video}: {summary.images} frames in {summary.seconds:.1f} s -> {summary.files[0]}")
    except PredictError as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
