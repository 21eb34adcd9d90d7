#!/usr/bin/env python
"""Thin shim over :mod:`d2reg.tools.token_norms` (installed: ``python -m d2reg.tools.token_norms``)."""
from d2reg.tools.token_norms import main

if __name__ == "__main__":
    main()
