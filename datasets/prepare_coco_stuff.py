#!/usr/bin/env python
"""Prepare COCO-Stuff-171 train2017/val2017 labels in CAT-Seg's layout from stuffthingmaps_trainval2017.

Thin entry point; the conversion and its documentation live in ovseg_d2/data/prepare/coco_stuff.py.
Run `python datasets/prepare_coco_stuff.py --help` for the options.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies first)
from ovseg_d2.data.prepare.coco_stuff import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
