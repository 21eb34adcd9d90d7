#!/usr/bin/env python
"""Build a DINOv2-reg backbone inside detectron2's simple feature pyramid, run it on a generated
image and print the pyramid levels. Without --weights a random official-layout checkpoint is
written to a temporary directory and loaded (said plainly in the output)."""
import argparse
import os
import tempfile
import time

import numpy as np
import torch
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.structures import ImageList
from tabulate import tabulate

from d2reg import DINOv2Backbone, SimpleFeaturePyramid
from d2reg.testing import write_random_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", default="", help="local DINOv2 checkpoint (official/timm/HF/d2reg)")
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--registers", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(600, 800), metavar=("H", "W"))
    args = parser.parse_args()

    weights = args.weights
    if not weights:
        weights = os.path.join(tempfile.mkdtemp(prefix="d2reg_demo_"), "random_official_layout.pth")
        write_random_checkpoint(weights, "official", arch=args.arch, num_register_tokens=args.registers)
        print(f"NOTE: no WEIGHTS given: using a RANDOMLY INITIALISED official-layout checkpoint {weights}\n"
              "      (features are meaningless; pass WEIGHTS=/path/to/dinov2_vits14_reg4_pretrain.pth).")
    net = DINOv2Backbone(arch=args.arch, num_register_tokens=args.registers, patch_size=args.patch_size,
                         weights=weights)
    info = net.checkpoint_info
    print(f"loaded {info.format}-layout checkpoint: {info.arch or 'custom'}, patch {info.patch_size} -> "
          f"{args.patch_size}, {info.num_register_tokens} registers")
    model = SimpleFeaturePyramid(net, "last_feat", 256, (4.0, 2.0, 1.0, 0.5), LastLevelMaxPool(), "LN").eval()

    rng = np.random.default_rng(0)
    h, w = args.size
    image = torch.from_numpy(rng.normal(size=(3, h, w)).astype("float32"))
    batch = ImageList.from_tensors([image], padding_constraints=model.padding_constraints)
    with torch.inference_mode():
        model(batch.tensor)  # warm-up
        start = time.perf_counter()
        out = model(batch.tensor)
        elapsed = time.perf_counter() - start
    shapes = model.output_shape()
    rows = [(name, tuple(t.shape), shapes[name].stride, shapes[name].channels) for name, t in out.items()]
    print(f"input {h}x{w} padded to {tuple(batch.tensor.shape[-2:])} (size divisibility "
          f"{model.padding_constraints['size_divisibility']})")
    print(tabulate(rows, headers=["level", "shape", "stride", "channels"], tablefmt="github"))
    print(f"forward: {elapsed * 1000:.0f} ms on {torch.get_num_threads()} CPU threads")


if __name__ == "__main__":
    main()
