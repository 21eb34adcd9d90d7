#!/usr/bin/env python
"""Thin shim over :mod:`d2reg.tools.attention_maps` (installed: ``python -m d2reg.tools.attention_maps``)."""
from d2reg.tools.attention_maps import main

if __name__ == "__main__":
    main()
