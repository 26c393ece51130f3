"""COCO category-id spaces and the look-up tables that map them to our contiguous label values.

Facts relied on (COCO-Stuff README, github.com/nightrome/cocostuff, and CAT-Seg's
``datasets/prepare_coco_stuff.py``):

* COCO numbers its categories 1..182: things 1..91, stuff 92..182. Eleven thing ids have no
  segmentation annotation anywhere (street sign 12, hat 26, shoe 29, eye glasses 30, plate 45,
  mirror 66, window 68, desk 69, door 71, blender 83, hair brush 91), which leaves 80 things +
  91 stuff = 171 classes.
* The COCO-Stuff ``stuffthingmaps_trainval2017`` PNGs store ``category id - 1`` per pixel
  (values 0..181) and 255 for "unlabeled".
* CAT-Seg's COCO-Stuff-171 labels number the 171 used ids contiguously in increasing id order
  (0 = person ... 79 = toothbrush, 80 = banner ... 170 = wood); everything else becomes 255.
* The COCO-Object protocol of GroupViT / TCL / FreeDA / Talk2DINO
  (``convert_dataset/convert_coco_object.py`` in NVlabs/GroupViT) keeps the 80 things as
  1..80 in the same order and turns every stuff pixel AND every unlabeled (255) pixel into
  background 0.

Look-up tables are 256-entry ``int16`` arrays indexed by the raw 8-bit value; ``INVALID`` marks
values a stuffthingmap never contains (182..254), which the converters report as corrupt input.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "UNUSED_THING_IDS",
    "THING_IDS",
    "STUFF_IDS",
    "STUFF_171_IDS",
    "IGNORE_LABEL",
    "BACKGROUND_LABEL",
    "INVALID",
    "stuffthingmap_to_stuff_171_lut",
    "stuffthingmap_to_object_lut",
    "thing_id_to_object_label",
]

#: Thing category ids that COCO defines but never annotates with masks.
UNUSED_THING_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91})
#: Last thing id and last stuff id of the 182-id space.
LAST_THING_ID = 91
LAST_STUFF_ID = 182
#: The 80 annotated thing ids and the 91 stuff ids, increasing.
THING_IDS = tuple(i for i in range(1, LAST_THING_ID + 1) if i not in UNUSED_THING_IDS)
STUFF_IDS = tuple(range(LAST_THING_ID + 1, LAST_STUFF_ID + 1))
#: The 171 ids of COCO-Stuff-171, in label-value order.
STUFF_171_IDS = THING_IDS + STUFF_IDS
#: Raw stuffthingmap value of "unlabeled", and our ignore value.
STUFFTHINGMAP_UNLABELED = 255
IGNORE_LABEL = 255
#: COCO-Object label of background (stuff and unlabeled pixels).
BACKGROUND_LABEL = 0
#: Marks raw values that must not occur in a stuffthingmap.
INVALID = -1

assert len(THING_IDS) == 80 and len(STUFF_IDS) == 91 and len(STUFF_171_IDS) == 171


def _empty_lut() -> np.ndarray:
    """Every raw value 182..254 invalid; filled in by the callers for 0..181 and 255."""
    return np.full(256, INVALID, dtype=np.int16)


def stuffthingmap_to_stuff_171_lut() -> np.ndarray:
    """Raw stuffthingmap value -> COCO-Stuff-171 label (0..170), 255 for unlabeled/unused ids."""
    lut = _empty_lut()
    lut[:LAST_STUFF_ID] = IGNORE_LABEL  # unused thing ids stay ignored
    for label, category_id in enumerate(STUFF_171_IDS):
        lut[category_id - 1] = label
    lut[STUFFTHINGMAP_UNLABELED] = IGNORE_LABEL
    return lut


def stuffthingmap_to_object_lut() -> np.ndarray:
    """Raw stuffthingmap value -> COCO-Object label: things 1..80, stuff and unlabeled 0.

    The eleven unused thing ids never occur in the release; should one appear it is ignored
    (255) rather than guessed.
    """
    lut = _empty_lut()
    lut[:LAST_THING_ID] = IGNORE_LABEL
    for category_id, label in thing_id_to_object_label().items():
        lut[category_id - 1] = label
    lut[LAST_THING_ID:LAST_STUFF_ID] = BACKGROUND_LABEL
    lut[STUFFTHINGMAP_UNLABELED] = BACKGROUND_LABEL
    return lut


def thing_id_to_object_label() -> dict[int, int]:
    """COCO thing category id (as in ``instances_*.json``) -> COCO-Object label 1..80."""
    return {category_id: index + 1 for index, category_id in enumerate(THING_IDS)}
