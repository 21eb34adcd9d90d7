#!/usr/bin/env python
"""Thin shim over :mod:`d2reg.tools.benchmark` (installed: ``python -m d2reg.tools.benchmark``)."""
import sys

from d2reg.tools.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
