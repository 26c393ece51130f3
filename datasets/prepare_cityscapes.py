#!/usr/bin/env python
"""Prepare Cityscapes-19 train-id labels (*_gtFine_labelTrainIds.png) from the official gtFine release.

Thin entry point; the conversion and its documentation live in ovseg_d2/data/prepare/cityscapes.py.
Run `python datasets/prepare_cityscapes.py --help` for the options.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies first)
from ovseg_d2.data.prepare.cityscapes import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
