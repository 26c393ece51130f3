#!/usr/bin/env python
"""Prepare PASCAL VOC 2012 (PAS-20, PAS-20b, V21 label folders) from the official raw release.

    python datasets/prepare_pascal_voc.py [--root DIR] [--splits train val] [--workers N]

The logic and the full description live in ``ovseg_d2/data/prepare/pascal_voc.py``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies first)
from ovseg_d2.data.prepare.pascal_voc import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
