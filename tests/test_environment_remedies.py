"""Both branches of each environment remedy: applied where broken, a no-op where it works."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ovseg_d2 import _environment

ENV_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ovseg_d2", "_environment.py")


def run_isolated(code: str) -> str:
    """Run ``code`` in a fresh interpreter with ``_environment.py`` loaded as module ``env``
    (without importing ovseg_d2, which would apply the remedies)."""
    prelude = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("env", {ENV_FILE!r})
        env = importlib.util.module_from_spec(spec); spec.loader.exec_module(env)
        """
    )
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def torchvision_ops_load() -> bool:
    return run_isolated("print(env._default_torchvision_loader())").strip() == "True"


def test_torchvision_remedy_matches_environment():
    """Applied exactly when torchvision's compiled library cannot load here."""
    assert ("torchvision_ops" in _environment.APPLIED) == (not torchvision_ops_load())
    import torchvision  # noqa: F401  (must import either way)
    import open_clip  # noqa: F401
    import timm  # noqa: F401


def test_torchvision_remedy_is_noop_when_library_loads():
    out = run_isolated(
        """
        import torch
        applied = env.remedy_torchvision_ops(load_library=lambda: True)
        print(applied, env.APPLIED)
        """
    )
    assert out.strip() == "False []"


def test_torchvision_remedy_declares_ops_when_library_fails():
    out = run_isolated(
        """
        import torch
        applied = env.remedy_torchvision_ops(load_library=lambda: False)
        import torchvision
        from torchvision.ops import roi_align
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.]])
        keep = torch.ops.torchvision.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        feat = torch.arange(16.).view(1, 1, 4, 4)
        pooled = roi_align(feat, [torch.tensor([[0., 0., 4., 4.]])], output_size=1, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        print(applied, keep.tolist(), round(pooled.item(), 4))
        """
    )
    # IoU(box0, box1) = 81 / 119 > 0.5 -> box1 suppressed; box2 disjoint. Mean of 0..15 = 7.5.
    assert out.strip() == "True [0, 2] 7.5"


def test_nms_reference_hand_computed():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0], [0.0, 0.0, 2.0, 2.1]])
    scores = torch.tensor([0.5, 0.9, 0.7])
    # IoU(1, 2) = 2 / (4 + 4.2 - 2) = 0.32; IoU(0, 2) = 4 / 4.2 = 0.95; IoU(0, 1) = 2 / 6 = 0.33.
    assert _environment._nms_reference(boxes, scores, 0.5).tolist() == [1, 2]
    assert _environment._nms_reference(boxes, scores, 0.3).tolist() == [1]
    assert _environment._nms_reference(boxes[:0], scores[:0], 0.5).tolist() == []


def test_detectron2_placeholder_is_noop_when_extension_exists():
    out = run_isolated(
        """
        import sys
        fake = {"detectron2": object(), "detectron2._C": object()}
        applied = env.remedy_detectron2_c(find_spec=lambda name: fake.get(name))
        print(applied, "detectron2._C" in sys.modules)
        """
    )
    assert out.strip() == "False False"


def test_detectron2_placeholder_registered_when_extension_missing():
    out = run_isolated(
        """
        import sys
        fake = {"detectron2": object()}
        applied = env.remedy_detectron2_c(find_spec=lambda name: fake.get(name))
        print(applied, type(sys.modules["detectron2._C"]).__name__)
        """
    )
    assert out.strip() == "True _Detectron2CPlaceholder"


def test_placeholder_names_the_missing_op():
    if "detectron2_c_placeholder" not in _environment.APPLIED:
        pytest.skip("a compiled detectron2 is installed")
    from detectron2 import _C

    with pytest.raises(_environment.MissingDetectron2Extension, match="deform_conv_forward.*deformable convolution"):
        _C.deform_conv_forward
    assert "not built" in _C.get_compiler_version()
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()  # default_setup calls it: must not raise
