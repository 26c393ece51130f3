#!/usr/bin/env python
"""Prepare ADE20K-847 (A-847) images and 16-bit labels in CAT-Seg's layout from the ADE20K 2021 release.

Thin entry point; the conversion and its documentation live in ovseg_d2/data/prepare/ade20k_full.py.
Run `python datasets/prepare_ade20k_full.py --help` for the options.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies first)
from ovseg_d2.data.prepare.ade20k_full import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
