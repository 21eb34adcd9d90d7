#!/usr/bin/env python
"""Thin shim over :mod:`d2reg.tools.pca_features` (installed: ``python -m d2reg.tools.pca_features``)."""
from d2reg.tools.pca_features import main

if __name__ == "__main__":
    main()
