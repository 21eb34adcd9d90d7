"""The package as a user installs it: ``python -m build`` (sdist, and the wheel built from that sdist) of a
copy of this clone, the wheel installed (not editable) into a fresh virtual env, and d2reg used from a
folder outside the clone: packaged configs by name, the demo model built, ``d2reg-predict`` on an image.

The fresh env has no system site packages; it sees the project venv's packages (torch, detectron2, ...)
through a ``.pth`` file listing the project interpreter's site directories. Site directories reached
that way do not run their own ``.pth`` files, so the project's editable d2reg finder stays inactive.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHECK = r'''
import json, os, sys
import d2reg
from d2reg import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from d2reg.config import resolve_recipe

lazy = model_zoo.get_config("COCO/mask_rcnn_vit_b_100ep.py")
yacs = model_zoo.get_config("COCO/mask_rcnn_vit_b_100ep.yaml")
cfg = model_zoo.get_config("demo/mask_rcnn_vit_tiny_synth.yaml")
cfg.MODEL.DEVICE = "cpu"
assert cfg.MODEL.D2REG.WEIGHTS == ""  # weights off: random init
model = build_model(resolve_recipe(cfg))
DetectionCheckpointer(model, save_dir=sys.argv[1]).save("demo_random")
print("RESULT " + json.dumps({
    "file": d2reg.__file__, "configs": len(model_zoo.list_configs()), "lazy": sorted(lazy),
    "yacs_backbone": yacs.MODEL.BACKBONE.NAME, "yacs_arch": yacs.MODEL.D2REG.ARCH,
    "params": sum(p.numel() for p in model.parameters()),
    "editable": sorted(m for m in sys.modules if "editable" in m),
}))
'''


def _copy_clone(dst: Path) -> None:
    """The files a fresh clone has (tracked + untracked, not ignored), or everything but caches without git."""
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                               capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, dst, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "output", "out", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.pth"))
        return
    for rel in filter(None, files):
        src, out = REPO / rel, dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), out)
        elif src.is_file():
            shutil.copy2(src, out)


def _site_dirs() -> list:
    """This interpreter's package folders (the project venv's; with --system-site-packages the system's too)."""
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return [d for i, d in enumerate(dirs) if d not in dirs[:i] and os.path.isdir(d)]


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return proc


def test_wheel_installs_and_predicts_outside_the_clone(tmp_path):
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.fail("`python -m build` is missing from the project venv: run `make venv` (it installs `build`).")
    src, dist, venv, outside = (tmp_path / n for n in ("src", "dist", "venv", "outside"))
    _copy_clone(src)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", PYTHONWARNINGS="ignore")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)], env=env)
    wheels, sdists = sorted(dist.glob("d2reg-*.whl")), sorted(dist.glob("d2reg-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, os.listdir(dist)
    names = zipfile.ZipFile(wheels[0]).namelist()
    packaged = {n.split("d2reg/configs/", 1)[1] for n in names if n.startswith("d2reg/configs/")}
    in_clone = {p.relative_to(REPO / "d2reg" / "configs").as_posix() for p in (REPO / "d2reg" / "configs").rglob("*")
                if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts}
    assert packaged == in_clone
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "d2reg/tools/predict.py" in names and not any(n.startswith(("tests/", "tools/")) for n in names)

    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=env)
    py = venv / "bin" / "python"
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   env=env).stdout.strip()
    Path(purelib, "_d2reg_project_packages.pth").write_text("\n".join(_site_dirs()) + "\n")
    # pip comes from the project venv (through the .pth); --ignore-installed: the project's editable d2reg
    # metadata is visible there too and must be left alone
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
          "--disable-pip-version-check", str(wheels[0])], env=env)

    outside.mkdir()
    res = _run([str(py), "-c", CHECK, str(outside)], cwd=outside, env=env)
    result = json.loads([line for line in res.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    assert Path(result["file"]).resolve().is_relative_to(venv.resolve()), result["file"]
    assert result["editable"] == [] and result["configs"] == len(in_clone)
    assert {"model", "dataloader", "train", "optimizer"} <= set(result["lazy"])
    assert (result["yacs_backbone"], result["yacs_arch"]) == ("build_d2reg_sfp_backbone", "vit_base")
    assert result["params"] > 0

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(outside / "img.png")
    proc = _run([str(venv / "bin" / "d2reg-predict"), "--config-file", "demo/mask_rcnn_vit_tiny_synth.yaml",
                 "--input", "img.png", "--output", "pred", "--device", "cpu", "--no-progress",
                 "MODEL.WEIGHTS", str(outside / "demo_random.pth")], cwd=outside, env=env)
    assert "predicted 1 image(s)" in proc.stdout
    assert np.asarray(Image.open(outside / "pred" / "img.png")).shape == (96, 128, 3)
    images = json.loads((outside / "pred" / "images.json").read_text())["images"]
    assert [im["file_name"] for im in images] == ["img.png"]
    assert isinstance(json.loads((outside / "pred" / "instances.json").read_text()), list)
