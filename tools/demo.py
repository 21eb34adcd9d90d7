#!/usr/bin/env python
"""Thin shim over :mod:`d2reg.tools.demo` (installed: ``python -m d2reg.tools.demo``)."""
from d2reg.tools.demo import main

if __name__ == "__main__":
    main()
