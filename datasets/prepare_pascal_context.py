#!/usr/bin/env python
"""Prepare PASCAL Context val (PC-59, PC-459, C60 label folders) from the official raw release.

    python datasets/prepare_pascal_context.py [--root DIR] [--benchmarks pc59 pc60 pc459] [--workers N]

The logic and the full description live in ``ovseg_d2/data/prepare/pascal_context.py``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies first)
from ovseg_d2.data.prepare.pascal_context import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
