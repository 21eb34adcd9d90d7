#!/usr/bin/env python
"""Thin shim over :mod:`d2reg.tools.predict` (installed: ``python -m d2reg.tools.predict``, ``d2reg-predict``)."""
import sys

from d2reg.tools.predict import main

if __name__ == "__main__":
    sys.exit(main())
