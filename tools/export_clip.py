#!/usr/bin/env python
"""Write the CLIP of a trained ovseg_d2 model as a plain open_clip checkpoint.

    python tools/export_clip.py --config-file configs/clipself_vitb16.yaml \
        --weights output/clipself_vitb16/model_final.pth --output clipself_vitb16.pt [--alpha 0.7]

For CLIPSelf the image tower is ``alpha * student + (1 - alpha) * teacher`` (default
``MODEL.CLIPSELF.ENSEMBLE_ALPHA``); the text tower is written unchanged. For any other model with
a CLIP backbone (CAT-Seg, the baseline) its CLIP is written as it is. Attention weights are packed
back into open_clip's ``in_proj_weight``; the file is checked by loading it with
``open_clip.create_model(MODEL.CLIP.MODEL_NAME, pretrained=file)`` (strict) and comparing every
tensor. Use it as ``MODEL.CLIP.PRETRAINED`` (e.g. configs/catseg_vitb_384_clipself.yaml).
The initial weights (``MODEL.CLIP.PRETRAINED``) are not needed: everything, the teacher included,
comes from ``--weights``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies and registration first)
import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402

from ovseg_d2 import add_ovseg_config  # noqa: E402
from ovseg_d2.checkpoint import build_checkpointer  # noqa: E402
from ovseg_d2.engine import OvsegTrainer  # noqa: E402
from ovseg_d2.modeling.backbone.clip_export import open_clip_state_dict, save_open_clip_checkpoint  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="the config the model was trained with")
    parser.add_argument("--weights", required=True, help="detectron2 checkpoint (model_final.pth)")
    parser.add_argument("--output", required=True, help="open_clip checkpoint to write (.pt)")
    parser.add_argument("--alpha", type=float, default=None, help="CLIPSelf ensembling weight (default MODEL.CLIPSELF.ENSEMBLE_ALPHA)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def export(args) -> dict:
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts))
    cfg.MODEL.CLIP.PRETRAINED = ""  # every weight comes from --weights
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    model = OvsegTrainer.build_model(cfg).eval()
    build_checkpointer(cfg, model).load(args.weights)
    if hasattr(model, "export_state_dict"):
        alpha = cfg.MODEL.CLIPSELF.ENSEMBLE_ALPHA if args.alpha is None else args.alpha
        state = model.export_state_dict(alpha)
        print(f"image tower = {alpha} * student + {1 - alpha:.4g} * teacher; text tower unchanged")
    elif hasattr(getattr(model, "backbone", None), "clip"):
        if args.alpha is not None:
            raise SystemExit(f"--alpha applies to CLIPSelf only; {type(model).__name__} has no teacher")
        state = open_clip_state_dict(model.backbone.clip)
    else:
        raise SystemExit(f"{type(model).__name__} has no CLIP backbone to export")
    save_open_clip_checkpoint(state, args.output)

    import open_clip

    check = open_clip.create_model(
        cfg.MODEL.CLIP.MODEL_NAME, pretrained=args.output, force_quick_gelu=cfg.MODEL.CLIP.FORCE_QUICK_GELU, weights_only=True
    ).state_dict()
    bad = [k for k in state if k in check and not torch.equal(check[k].cpu(), state[k])]
    if bad or set(check) - set(state):
        raise SystemExit(f"open_clip did not read back {args.output} exactly: {bad[:5]} {sorted(set(check) - set(state))[:5]}")
    print(f"wrote {args.output}: {len(state)} tensors, loads into open_clip {cfg.MODEL.CLIP.MODEL_NAME!r} unchanged")
    return state


if __name__ == "__main__":
    export(build_parser().parse_args())
