#!/usr/bin/env python
"""Thin shim over :mod:`d2reg.tools.train_net` (installed: ``python -m d2reg.tools.train_net``)."""
from d2reg.tools.train_net import invoke_main, main  # noqa: F401  (main: detectron2's launch worker, used by tests)

if __name__ == "__main__":
    invoke_main()
