"""Convert a DINOv2 checkpoint (official / timm / Hugging Face layout, patch 14) into a detectron2
``.pth`` for a d2reg model at the target patch size (patch embedding resampled, default PI-resize),
for ``MODEL.WEIGHTS`` / ``train.init_checkpoint`` — also with detectron2's stock checkpointer.

    python tools/convert_checkpoint.py dinov2_vitb14_reg4_pretrain.pth d2reg_vitb16_reg4.pth
    python tools/convert_checkpoint.py hf_model/model.safetensors out.pth --patch-size 16 --prefix backbone.vit.

Keys are ``backbone.net.vit.*`` (a DINOv2Backbone inside the simple feature pyramid); use
``--prefix backbone.vit.`` for models whose backbone is the bare ViT (linear semantic-seg probe).
d2reg's own tools also read the original file directly; converting once saves the conversion at
every start and makes the file usable by any detectron2 code.
"""
import argparse
import os

import torch

from d2reg.checkpoint import convert_to_detectron2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="local DINOv2 checkpoint (.pth/.pt/.bin/.safetensors)")
    parser.add_argument("dst", help="output .pth")
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--patch-resize", choices=("pi", "bicubic"), default=None,
                        help="DINOv2: how 14-px kernels are resized (default pi)")
    parser.add_argument("--pretrain-img-size", type=int, default=None,
                        help="DINOv2: MODEL.D2REG.PRETRAIN_IMG_SIZE of the model that will load it (default 518)")
    parser.add_argument("--final-norm", action="store_true", help="keep the final LayerNorm (FINAL_NORM True)")
    parser.add_argument("--prefix", default="backbone.net.vit.")
    args = parser.parse_args(argv)
    family_kwargs = {k: v for k, v in (("patch_resize", args.patch_resize),
                                         ("pretrain_img_size", args.pretrain_img_size)) if v is not None}
    out = convert_to_detectron2(args.src, args.patch_size, args.final_norm, args.prefix, **family_kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    torch.save(out, args.dst)
    print(f"{args.src} -> {args.dst}: {len(out['model'])} tensors under {args.prefix!r} ({out['__author__']})")
    return args.dst


if __name__ == "__main__":
    main()
