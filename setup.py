from setuptools import find_packages, setup

# Lower bounds are the versions d2reg has been run with (Python 3.11, torch 2.14.1, torchvision 0.29.1,
# timm 1.0.31, transformers 5.24.0); older ones may work but are not tested. torch/torchvision are
# ranges so that pip keeps a user's own (e.g. CUDA) build.
#
# Not listed, on purpose, as detectron2 does:
# - detectron2 itself: not on PyPI; install it first (an official source build, or see README).
# - OpenCV: detectron2.data (and d2reg.data, the synthetic demo data) import cv2, but the user picks the
#   build (opencv-python, opencv-python-headless, conda's opencv; two of them in one env conflict).
#   `pip install -e ".[opencv]"` adds opencv-python-headless for an environment that has none.
setup(
    name="d2reg",
    version="0.1.0",
    description="DINOv2-with-registers ViT backbones for detectron2 (ViTDet-style simple feature pyramid)",
    packages=find_packages(include=["d2reg", "d2reg.*"]),
    license="Apache-2.0",  # d2reg's code; the DINOv3 weights stay under the DINOv3 License (README)
    python_requires=">=3.11",
    install_requires=[
        "torch>=2.14",
        "torchvision>=0.29",
        "timm>=1.0.31",
        "safetensors",
        "fvcore",  # fvcore.common.param_scheduler in the LazyConfigs (sal-detectron2 does not declare it)
        "tqdm",
        "matplotlib",
        "pycocotools",
        "Pillow",
        "shapely",  # detectron2 crops polygon annotations with it (LSJ / INPUT.CROP)
    ],
    extras_require={
        "opencv": ["opencv-python-headless"],
        # Hugging Face comparisons (d2reg.benchmark) and HF-layout test checkpoints (d2reg.testing);
        # reading HF checkpoints needs no transformers
        "hf": ["transformers>=5.24"],
        # d2reg.export / tools/export_onnx.py: ONNX graphs checked with onnxruntime (opset 23 Attention: onnx 1.18,
        # onnxruntime 1.23)
        "export": ["onnx>=1.18", "onnxruntime>=1.23", "onnxscript>=0.3"],
        # LoRA fine-tuning of the backbone (MODEL.D2REG.LORA)
        "lora": ["peft>=0.13"],
        "test": ["pytest", "ruff", "transformers>=5.24", "onnx>=1.18", "onnxruntime>=1.23", "onnxscript>=0.3",
                 "peft>=0.13"],
    },
)
