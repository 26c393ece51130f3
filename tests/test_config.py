"""add_ovseg_config: every key declared with a comment, round-trips, and configs merge."""
import ast
import glob
import os

import yaml
from detectron2.config import CfgNode, get_cfg

from ovseg_d2 import add_ovseg_config
from ovseg_d2 import config as config_module

from .conftest import REPO_ROOT


def _as_lists(value):
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _flatten(node, prefix=""):
    """Flat {"A.B": value} view; tuples and lists compare equal (YAML has only lists)."""
    out = {}
    for key, value in node.items():
        if isinstance(value, CfgNode):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _as_lists(value)
    return out


def test_adds_keys_on_top_of_detectron2_defaults():
    base = _flatten(get_cfg())
    cfg = add_ovseg_config(get_cfg())
    added = set(_flatten(cfg)) - set(base)
    assert {"MODEL.CLIP.PRETRAINED", "MODEL.DINOV2.PRETRAINED", "SOLVER.LR_MULTIPLIERS", "TEST.EVAL_BEFORE_TRAIN"} <= added


def test_every_assignment_has_a_comment():
    source = open(config_module.__file__).read().splitlines()
    tree = ast.parse("\n".join(source))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "add_ovseg_config")
    assigns = [n for n in ast.walk(fn) if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]).startswith("_C.")]
    assert len(assigns) > 30
    uncommented = [source[n.lineno - 1].strip() for n in assigns if "#" not in source[n.end_lineno - 1] and "= CN()" not in source[n.lineno - 1]]
    assert uncommented == []


def test_round_trip_through_yaml(tmp_path):
    cfg = add_ovseg_config(get_cfg())
    cfg.SOLVER.LR_MULTIPLIERS = [["clip\\.", 0.01], ["head", 2.0]]
    cfg.MODEL.CLIP.INTERMEDIATE_LAYERS = [3, 7]
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.dump())
    again = add_ovseg_config(get_cfg())
    again.merge_from_file(str(path))
    assert _flatten(again) == _flatten(cfg)
    assert yaml.safe_load(path.read_text())["SOLVER"]["LR_MULTIPLIERS"] == [["clip\\.", 0.01], ["head", 2.0]]


def test_command_line_overrides():
    cfg = add_ovseg_config(get_cfg())
    cfg.merge_from_list(["SOLVER.LR_MULTIPLIERS", "[['clip', 0.01]]", "MODEL.CLIP.PRETRAINED", "/tmp/x.pt"])
    assert cfg.SOLVER.LR_MULTIPLIERS == [["clip", 0.01]]
    assert cfg.MODEL.CLIP.PRETRAINED == "/tmp/x.pt"


def test_every_shipped_config_merges():
    files = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True))
    assert files
    for path in files:
        cfg = add_ovseg_config(get_cfg())
        cfg.merge_from_file(path)
        assert cfg.MODEL.META_ARCHITECTURE or os.path.basename(path).startswith("Base")
