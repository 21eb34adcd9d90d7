"""High-norm ("outlier") patch tokens per block of a DINOv2(-reg) or DINOv3 ViT ("Vision Transformers
Need Registers", Fig. 4a / 5a). The family is read from the checkpoint (DINOv3: its 4 storage tokens
are reported where the registers are); --compare-weights may be of the other family (e.g. a DINOv2-reg
beside a DINOv3 model: each runs at its own patch size unless --patch-size is given).

Norms are measured at every block's output BEFORE the final LayerNorm unless --post-norm is given:
the official get_intermediate_layers(norm=True) applies that LayerNorm, which rescales every token
to about the same length and so hides the outliers.

Writes DIR/summary.json ({"blocks": [{"block", "min", "median", "p99", "max", "outlier_fraction"}...],
"outliers": [{"image", "block", "row", "col", "norm"}...], ...}), block_norms.csv, outliers.csv,
norm_distribution.png, norm_by_block.png, neighbour_cosine.png and heatmaps/<image>.png; with
--compare-weights the second model's summary goes to DIR/compare/ and the figures show both.

  python tools/token_norms.py images/ --weights dinov2_vitg14_pretrain.pth --threshold 150 --output out/norms \\
      --compare-weights dinov2_vitg14_reg4_pretrain.pth
  python tools/token_norms.py images/ --weights dinov2_vitl14_reg4_pretrain.pth --relative 5 \\
      --compare-weights dinov3_vitl16_pretrain_lvd1689m.pth --output out/v2_vs_v3
"""
import argparse
import os
import sys

import numpy as np
from tqdm import tqdm

from d2reg.analysis import (
    block_stats,
    block_thresholds,
    common_parser,
    find_outliers,
    load_images,
    load_model,
    outlier_neighbour_similarity,
    output_dir,
    reference_block,
    token_norms,
)
from d2reg.analysis.norms import summary, write_csv, write_json
from d2reg.analysis.norms_report import format_norm_report, heatmap_blocks, norm_mode, norms_meta
from d2reg.analysis.plots import plot_neighbour_cosine, plot_norm_by_block, plot_norm_distribution, plot_norm_heatmaps

DEFAULT_THRESHOLD = 150.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, parents=[common_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    thr = p.add_mutually_exclusive_group()
    thr.add_argument("--threshold", type=float, default=None,
                     help=f"absolute norm above which a patch token is an outlier (default {DEFAULT_THRESHOLD:g})")
    thr.add_argument("--relative", type=float, default=None, metavar="K",
                     help="outlier: norm > K x that block's median patch-token norm (over all images)")
    p.add_argument("--post-norm", action="store_true", help="measure after the final LayerNorm (hides outliers)")
    p.add_argument("--compare-weights", default="",
                   help="second checkpoint shown side by side (e.g. the -reg4 model, or a DINOv3 file: any family)")
    p.add_argument("--compare-arch", default=None, help="arch of --compare-weights (default: from the checkpoint)")
    p.add_argument("--compare-registers", type=int, default=None,
                   help="registers of --compare-weights (default: from the checkpoint)")
    p.add_argument("--reference-block", type=int, default=None,
                   help="block whose outliers are used for the neighbour similarity (default: the last block "
                        "if it has outliers, else the block with the most)")
    p.add_argument("--heatmap-blocks", default="auto",
                   help="'auto' (blocks with outliers in the image, at most 8, else the last), 'all', or e.g. 0,6,11")
    p.add_argument("--max-heatmaps", type=int, default=8, help="draw heatmaps for at most this many images")
    p.add_argument("--no-plots", action="store_true", help="tables, JSON and CSV only")
    return p


def analyse(model, images, args):
    """Norms, stats, outliers and neighbour similarity of one model over all images."""
    results = [token_norms(model, im, args.post_norm)
               for im in tqdm(images, desc=f"norms {model.label}", disable=len(images) < 4, file=sys.stdout)]
    thresholds = block_thresholds(results, args.threshold, args.relative)
    stats = block_stats(results, thresholds)
    outliers = find_outliers(results, thresholds)
    sim = outlier_neighbour_similarity(results, thresholds, reference_block(stats, args.reference_block))
    return results, thresholds, stats, outliers, sim


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threshold is None and args.relative is None:
        args.threshold = DEFAULT_THRESHOLD
    out = output_dir(args, "token_norms")
    images = load_images(args.inputs, args.resize, args.max_images)
    print(f"{len(images)} image(s); output: {out}")
    runs = [(args.weights, args.arch, args.registers, out, args.family)]
    if args.compare_weights:
        runs.append((args.compare_weights, args.compare_arch, args.compare_registers, os.path.join(out, "compare"),
                     None))
    done = {}
    for weights, arch, registers, folder, family in runs:
        model = load_model(weights, arch, registers, args.patch_size, args.patch_resize, args.post_norm, args.device,
                           args.embed_dim, args.depth, args.num_heads, family)
        results, thresholds, stats, outliers, sim = analyse(model, images, args)
        os.makedirs(folder, exist_ok=True)
        result = summary(stats, outliers, norms_meta(model, images, args.post_norm, args.relative, thresholds, sim))
        write_json(result, os.path.join(folder, "summary.json"))
        write_csv(stats, os.path.join(folder, "block_norms.csv"))
        write_csv(outliers, os.path.join(folder, "outliers.csv"), fields=("image", "block", "row", "col", "norm"))
        label = model.short_label if model.short_label not in done else f"{model.short_label} [B]"
        print(format_norm_report(model.label, stats, outliers, sim, [im.name for im in images], args.post_norm,
                                 args.relative))
        done[label] = dict(results=results, thresholds=thresholds, stats=stats, outliers=outliers, sim=sim,
                           patch=model.patch_size, summary=result)
        del model
    if not args.no_plots:
        write_plots(done, images, args, out)
    print(f"\nwrote {out}/summary.json, block_norms.csv, outliers.csv" + ("" if args.no_plots else " and PNGs")
          + (f"; second model in {out}/compare/" if args.compare_weights else ""))
    return next(iter(done.values()))["summary"]


def write_plots(done: dict, images, args, out: str) -> None:
    mode = norm_mode(args.post_norm)
    thresholds = {k: v["thresholds"] for k, v in done.items()}
    series = {k: [np.concatenate([r.norms[b].ravel() for r in v["results"]]) for b in range(len(v["stats"]))]
              for k, v in done.items()}
    plot_norm_distribution(series, thresholds, os.path.join(out, "norm_distribution.png"),
                           f"patch-token L2 norm per block ({mode}; dashed: outlier threshold)")
    plot_norm_by_block({k: v["stats"] for k, v in done.items()}, os.path.join(out, "norm_by_block.png"),
                       f"patch-token norms per block ({mode})")
    plot_neighbour_cosine({k: v["sim"] for k, v in done.items()}, os.path.join(out, "neighbour_cosine.png"))
    os.makedirs(os.path.join(out, "heatmaps"), exist_ok=True)
    depth = max(len(v["stats"]) for v in done.values())
    for i, im in enumerate(tqdm(images[: args.max_heatmaps], desc="heatmaps", disable=len(images) < 4,
                                file=sys.stdout)):
        blocks = heatmap_blocks(args.heatmap_blocks, depth, [v["outliers"] for v in done.values()], im.name)
        maps = {k: v["results"][i].norms for k, v in done.items()}
        patch = {k: v["patch"] for k, v in done.items()}  # per model: DINOv2 at 14 beside DINOv3 at 16
        plot_norm_heatmaps(im.rgb, maps, blocks, patch, thresholds, os.path.join(out, "heatmaps", f"{im.name}.png"),
                           f"{im.name}: patch-token norms ({mode}); boxes: outliers")


if __name__ == "__main__":
    main()
