"""tools/compare_catseg_reference.py: argument checking that needs no reference checkout."""
import importlib.util
import os

import pytest

_TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "compare_catseg_reference.py")
_spec = importlib.util.spec_from_file_location("compare_catseg_reference", _TOOL)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(tool.ReferenceCheckoutError, match="KU-CVLAB/CAT-Seg.*is not a directory"):
        tool.check_reference_root(str(tmp_path / "nowhere"), "configs/vitb_384.yaml")


def test_incomplete_root_lists_the_missing_files(tmp_path):
    (tmp_path / "cat_seg").mkdir()
    (tmp_path / "cat_seg" / "cat_seg_model.py").write_text("")
    with pytest.raises(tool.ReferenceCheckoutError) as error:
        tool.check_reference_root(str(tmp_path), "configs/vitb_384.yaml")
    message = str(error.value)
    assert "cat_seg/modeling/transformer/model.py" in message and "configs/vitb_384.yaml" in message
    assert "cat_seg/cat_seg_model.py," not in message  # present, so not listed


def test_complete_root_is_accepted(tmp_path):
    for f in (*tool.REFERENCE_FILES, "configs/vitb_384.yaml"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    assert tool.check_reference_root(str(tmp_path), "configs/vitb_384.yaml") == tmp_path.resolve()


def test_config_pairing_and_sizes():
    assert tool.reference_config_for("configs/catseg_vitl_336.yaml") == ("configs/vitl_336.yaml", "ViT-L-14-336")
    with pytest.raises(ValueError, match="no reference counterpart"):
        tool.reference_config_for("configs/quickstart/catseg_tiny.yaml")
    with pytest.raises(ValueError, match="comma-separated integers"):
        tool.parse_sizes("20,abc")


def test_main_exits_with_the_message(tmp_path, capsys):
    assert tool.main(["--reference-root", str(tmp_path / "nowhere")]) == 2
    assert "KU-CVLAB/CAT-Seg" in capsys.readouterr().err
