#!/usr/bin/env python
"""Thin shim over :mod:`d2reg.tools.convert_checkpoint` (installed: ``python -m d2reg.tools.convert_checkpoint``)."""
from d2reg.tools.convert_checkpoint import main

if __name__ == "__main__":
    main()
