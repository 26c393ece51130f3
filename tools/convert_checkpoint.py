#!/usr/bin/env python
"""Convert a released checkpoint to ovseg_d2's module names, explicitly.

    python tools/convert_checkpoint.py --config-file configs/catseg_vitb_384.yaml \
        --input catseg_vitb.pth --output catseg_vitb_ovseg.pth

``MODEL.WEIGHTS <released file>`` already does this on the fly; this tool writes the converted
file once (e.g. to share it, or to inspect it). The layout is recognised from the keys
(``ovseg_d2/checkpoint/layouts.py``) and named in the output; the converted state must match the
model that ``--config-file`` builds exactly, or the tool stops and lists missing, unknown and
mis-shaped keys. The input is read with ``torch.load(weights_only=True)`` (``--unsafe-pickle``
to opt out for a trusted file) and never modified; an existing output is never overwritten.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401
import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from ovseg_d2 import add_ovseg_config  # noqa: E402
from ovseg_d2.checkpoint import OvsegCheckpointer, atomic_write  # noqa: E402
from ovseg_d2.checkpoint.layouts import detect_layout  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="config that builds the target model")
    parser.add_argument("--input", required=True, help="released checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="converted checkpoint to write (must not exist)")
    parser.add_argument("--unsafe-pickle", action="store_true", help="allow arbitrary pickled objects (trusted files only)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if os.path.exists(args.output):
        print(f"error: {args.output} exists; choose another --output (nothing is overwritten)")
        return 1
    if os.path.abspath(args.output) == os.path.abspath(args.input):
        print("error: --output must differ from --input")
        return 1
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.CLIP.PRETRAINED", ""] + args.opts)
    model = build_model(cfg)
    checkpointer = OvsegCheckpointer(model, weights_only=not args.unsafe_pickle)
    raw = checkpointer._load_file(args.input)
    layout = detect_layout(raw["model"])
    print(f"recognised layout: {layout.name + ' - ' + layout.description if layout else 'ovseg_d2 (no renaming)'}")
    checkpointer._load_model(dict(raw))  # converts, checks the exact match, loads
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_write(args.output, lambda f: torch.save({"model": state, "__converted_from__": os.path.basename(args.input)}, f))
    print(f"wrote {args.output}: {len(state)} tensors for {cfg.MODEL.META_ARCHITECTURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
