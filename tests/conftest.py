"""Test-wide set-up: offline hubs, remedies before torchvision, a session-wide data root."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The persistent text-embedding cache ("auto": $XDG_CACHE_HOME/ovseg_d2/...) never touches the
# user's home during tests; each test gets its own (see isolated_text_cache).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ovseg_d2_test_cache_")

import ovseg_d2  # noqa: E402,F401  (remedies and registration before anything else)
import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A DETECTRON2_DATASETS root shared by the tests that need the built-in data set."""
    root = tmp_path_factory.mktemp("detectron2_datasets")
    previous = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("DETECTRON2_DATASETS", None)
    else:
        os.environ["DETECTRON2_DATASETS"] = previous


@pytest.fixture(autouse=True)
def isolated_text_cache(tmp_path, monkeypatch):
    """A fresh user cache dir per test, so text-encoder call counts never depend on test order."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))


def quickstart_cfg(config="configs/quickstart/baseline_maskclip_tiny.yaml", *opts):
    """The quickstart config with overrides, not frozen."""
    from detectron2.config import get_cfg

    from ovseg_d2 import add_ovseg_config

    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, config))
    cfg.merge_from_list(list(opts))
    return cfg


def make_dry_run_steps(target, *variables, output_root_pattern):
    """`make -n TARGET VAR=...` without re-running set-up: (the time-stamped output folder the
    recipe chose, matched by ``output_root_pattern`` (one group), the lines that call tools/)."""
    import re
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "-o", ".venv/.ovseg_d2_setup_stamp", target, *variables],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    root = re.search(output_root_pattern, out).group(1)
    return root, [line for line in out.splitlines() if "tools/" in line]


def assert_steps(steps, want):
    """Each dry-run line holds every fragment of its entry in ``want``, in order, and no more lines."""
    assert len(steps) == len(want), steps
    for line, parts in zip(steps, want):
        assert all(part in line for part in parts), (line, parts)
