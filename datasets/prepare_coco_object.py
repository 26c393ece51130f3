#!/usr/bin/env python
"""Prepare COCO-Object val2017 labels (80 things + background) for the training-free protocol.

Thin entry point; the conversion and its documentation live in ovseg_d2/data/prepare/coco_object.py.
Run `python datasets/prepare_coco_object.py --help` for the options.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies first)
from ovseg_d2.data.prepare.coco_object import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
