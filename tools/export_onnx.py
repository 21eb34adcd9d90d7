#!/usr/bin/env python
"""Thin shim over :mod:`d2reg.tools.export_onnx` (installed: ``python -m d2reg.tools.export_onnx``)."""
import sys

from d2reg.tools.export_onnx import main

if __name__ == "__main__":
    sys.exit(main())
