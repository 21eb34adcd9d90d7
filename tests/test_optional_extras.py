"""d2reg works without its optional extras (issue 23: a module-level ``import peft`` once made ``import d2reg``
fail for every user without ``[lora]``).

The project's venv installs every extra, which would hide such an import. So the check runs in a subprocess
whose import system refuses peft, onnx, onnxruntime, onnxscript and transformers (first asserting that they
really cannot be imported there): every d2reg module imports, every shipped config's model builds (the
same builds as tests/test_configs.py, weights off: none of them uses LoRA or export), every tool's ``--help``
runs, and the features that need an extra fail with :class:`d2reg.extras.MissingExtraError` naming it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFUSED = ("peft", "onnx", "onnxruntime", "onnxscript", "transformers")

CHILD = textwrap.dedent(
    r'''
    import sys

    REFUSED = set(sys.argv[2].split(","))

    from importlib.machinery import PathFinder

    class HideExtras(PathFinder):
        """sys.meta_path's PathFinder, blind to the optional extras: they are not found, as in an env
        without them (``importlib.util.find_spec`` gives None, ``import`` raises ModuleNotFoundError)."""

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in REFUSED:
                return None
            return super().find_spec(name, path, target)

    sys.meta_path[:] = [HideExtras if f is PathFinder else f for f in sys.meta_path]
    assert HideExtras in sys.meta_path

    import contextlib
    import importlib
    import io
    import json
    import runpy
    from pathlib import Path

    repo = Path(sys.argv[1])
    sys.path.insert(0, str(repo / "tests"))
    from _child import fmt, import_submodules

    failures, counts = {}, {}

    for name in sorted(REFUSED):  # the blocker works
        try:
            importlib.import_module(name)
            failures[f"blocker {name}"] = f"{name} imported although it is refused"
        except ModuleNotFoundError:
            pass

    import d2reg

    counts["modules"] = import_submodules(d2reg, failures)

    import pytest
    import test_configs as tc  # the every-config builds, run here without the extras

    counts["lazy"] = counts["yacs"] = 0
    for rel in tc.PY_CONFIGS:
        try:
            tc.test_lazyconfig_loads_and_builds(rel)
            counts["lazy"] += 1
        except pytest.skip.Exception:
            pass  # configs/detrex without detrex
        except BaseException as e:  # noqa: BLE001
            failures[rel] = fmt(e)
    for rel in tc.YAML_CONFIGS:
        try:
            tc.test_yacs_loads_and_builds(rel)
            counts["yacs"] += 1
        except BaseException as e:  # noqa: BLE001
            failures[rel] = fmt(e)

    counts["tools"] = 0
    for tool in sorted((repo / "tools").glob("*.py")):
        sys.argv = [str(tool), "--help"]
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                runpy.run_path(str(tool), run_name="__main__")
            failures[f"tools/{tool.name}"] = "--help did not exit"
        except SystemExit as e:
            if e.code not in (0, None) or "usage" not in out.getvalue().lower():
                failures[f"tools/{tool.name}"] = f"--help exited with {e.code}: {out.getvalue()[-1000:]}"
            else:
                counts["tools"] += 1
        except BaseException as e:  # noqa: BLE001
            failures[f"tools/{tool.name}"] = fmt(e)

    # the features that need an extra say which one
    from d2reg.extras import MissingExtraError
    from d2reg.testing import TINY_ARCH

    messages = {}
    try:
        d2reg.DINOv2Backbone(**TINY_ARCH, lora={"rank": 2})
    except MissingExtraError as e:
        messages["lora"] = str(e)
    from d2reg.export.verify import ort_session

    try:
        ort_session("missing.onnx")
    except MissingExtraError as e:
        messages["export"] = str(e)
    counts["messages"] = messages
    counts["refused_imported"] = sorted(n for n in sys.modules if n.split(".")[0] in REFUSED)
    print("RESULT " + json.dumps({"failures": failures, "counts": counts}))
    '''
)


def test_d2reg_configs_and_tools_without_optional_extras():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP",)}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(REPO), ",".join(REFUSED)], capture_output=True,
                          text=True, env=env, cwd=str(REPO), timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert not result["failures"], "\n\n".join(f"{k}:\n{v}" for k, v in result["failures"].items())
    counts = result["counts"]
    configs = REPO / "configs"
    n_py = sum(1 for p in configs.rglob("*.py") if p.relative_to(configs).parts[0] != "detrex")
    assert counts["lazy"] >= n_py and counts["yacs"] == sum(1 for _ in configs.rglob("*.yaml")), counts
    assert counts["tools"] == sum(1 for _ in (REPO / "tools").glob("*.py")), counts
    assert counts["modules"] > 10 and not counts["refused_imported"], counts
    lora, export = counts["messages"].get("lora", ""), counts["messages"].get("export", "")
    assert "peft" in lora and '".[lora]"' in lora and "lora=" in lora, counts["messages"]
    assert "onnxruntime" in export and '".[export]"' in export, counts["messages"]
