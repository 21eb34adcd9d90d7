"""d2reg works where ``pkg_resources`` does not exist (setuptools >= 81/82, a detectron2 user's environment).

The project's own venv pins ``setuptools<81``, which still ships ``pkg_resources``: it would hide any
use of ``detectron2.model_zoo`` (which imports it, detectron2 issue #5494). So the check runs in a
subprocess whose import system refuses ``pkg_resources``: every shipped LazyConfig and YACS config
loads there, every d2reg module imports, the two training tools import, and the demo model builds.
The blocker is checked too (``from detectron2 import model_zoo`` must fail there), so the test cannot
pass by accident.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from d2reg import zoo

REPO = Path(__file__).resolve().parents[1]

# runs in a fresh interpreter: refuse pkg_resources before anything is imported
CHILD = textwrap.dedent(
    r'''
    import sys

    class RefusePkgResources:
        """A meta-path finder that makes pkg_resources unimportable, as setuptools >= 82 does."""

        def find_spec(self, name, path=None, target=None):
            if name == "pkg_resources" or name.startswith("pkg_resources."):
                raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)
            return None

    sys.meta_path.insert(0, RefusePkgResources())
    assert "pkg_resources" not in sys.modules

    import importlib
    import json
    from pathlib import Path

    repo = Path(sys.argv[1])
    sys.path.insert(0, str(repo))
    sys.path.insert(0, str(repo / "tests"))
    from _child import fmt, import_submodules

    failures, counts = {}, {}

    def pkg_resources_failure(exc):
        """The traceback if ``exc`` (or what caused it) is the refused pkg_resources, else None."""
        e = exc
        while e is not None:
            if isinstance(e, ImportError) and (getattr(e, "name", None) or "").split(".")[0] == "pkg_resources":
                return fmt(exc)
            e = e.__cause__ or e.__context__
        return None

    try:  # the blocker works: detectron2's model_zoo needs pkg_resources
        from detectron2 import model_zoo  # noqa: F401
        failures["blocker"] = "detectron2.model_zoo imported although pkg_resources is refused"
    except ModuleNotFoundError as e:
        assert e.name == "pkg_resources", e
    for name in [m for m in sys.modules if m.startswith("detectron2.model_zoo")]:
        del sys.modules[name]

    import d2reg

    # every d2reg module (a module failing for another reason, e.g. an optional dependency, is not
    # this test's business; only pkg_resources counts)
    counts["modules"] = import_submodules(d2reg, failures, report=pkg_resources_failure)

    from detectron2.config import LazyConfig, get_cfg

    from d2reg import add_d2reg_config
    from d2reg.config import resolve_recipe

    configs = repo / "configs"
    counts["lazy"] = counts["yacs"] = 0
    for path in sorted(configs.rglob("*.py")):
        rel = path.relative_to(configs).as_posix()
        try:
            LazyConfig.load(str(path))
            counts["lazy"] += 1
        except BaseException as e:  # noqa: BLE001
            # detrex is not on PyPI: its configs stop at their detrex import when it is missing
            if rel.startswith("detrex/") and (getattr(e, "name", None) or "").split(".")[0] == "detrex":
                continue
            failures[rel] = pkg_resources_failure(e) or fmt(e)
    for path in sorted(configs.rglob("*.yaml")):
        rel = path.relative_to(configs).as_posix()
        try:
            cfg = get_cfg()
            add_d2reg_config(cfg)
            cfg.merge_from_file(str(path))
            resolve_recipe(cfg)
            counts["yacs"] += 1
        except BaseException as e:  # noqa: BLE001
            failures[rel] = fmt(e)

    # the training tools import; the demo LazyConfig's model builds (targets resolved at instantiate)
    for tool in ("train_net", "lazyconfig_train_net"):
        try:
            spec = importlib.util.spec_from_file_location(f"tool_{tool}", repo / "tools" / f"{tool}.py")
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        except BaseException as e:  # noqa: BLE001
            failures[f"tools/{tool}.py"] = pkg_resources_failure(e) or fmt(e)
    from detectron2.config import instantiate

    try:
        instantiate(LazyConfig.load(str(configs / "demo" / "mask_rcnn_vit_tiny_synth.py")).model)
    except BaseException as e:  # noqa: BLE001
        failures["demo model"] = fmt(e)
    counts["pkg_resources_imported"] = "pkg_resources" in sys.modules
    print("RESULT " + json.dumps({"failures": failures, "counts": counts}))
    '''
)


def test_configs_and_tools_without_pkg_resources():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP",)}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(REPO)], capture_output=True, text=True, env=env,
                          cwd=str(REPO), timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert not result["failures"], "\n\n".join(f"{k}:\n{v}" for k, v in result["failures"].items())
    counts = result["counts"]
    n_py = sum(1 for p in (REPO / "configs").rglob("*.py") if not p.relative_to(REPO / "configs").parts[0] == "detrex")
    n_yaml = sum(1 for _ in (REPO / "configs").rglob("*.yaml"))
    assert counts["lazy"] >= n_py and counts["yacs"] == n_yaml, counts
    assert counts["modules"] > 10 and not counts["pkg_resources_imported"], counts


def test_zoo_finds_detectron2_configs_and_explains_a_missing_one():
    path = zoo.get_config_file("common/models/mask_rcnn_vitdet.py")
    assert Path(path).is_file() and Path(path).parent.parent.parent == zoo.detectron2_configs_dir()
    assert "model" in zoo.get_config("common/models/mask_rcnn_vitdet.py")
    cfg = zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")  # YACS, _BASE_ included
    assert cfg.MODEL.RESNETS.DEPTH == 50
    with pytest.raises(FileNotFoundError) as err:
        zoo.get_config_file("common/no_such_config.py")
    msg = str(err.value)
    assert "common/no_such_config.py" in msg and str(zoo.detectron2_configs_dir()) in msg and "pip install -e ." in msg
