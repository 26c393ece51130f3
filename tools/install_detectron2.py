#!/usr/bin/env python
"""Install detectron2 v0.6 (pure Python, no C extension) from the package registry.

The official detectron2 is not published on PyPI. ``pb1-detectron2==0.6`` is upstream
v0.6's Python code, but its sdist lacks ``detectron2/layers/csrc`` so the normal build
fails. This script downloads that sdist into a temporary folder, removes the C extension
from its ``setup.py``, rewrites the numpy aliases removed in numpy 1.24
(``np.int``/``np.float``/...) and Pillow 10's ``Image.LINEAR``, and installs it with
``--no-deps`` into the running interpreter.

An importable detectron2 (e.g. one built from source on a GPU machine) is kept as is.
``ovseg_d2`` registers a placeholder ``detectron2._C`` that names any missing compiled op.

Usage: python tools/install_detectron2.py [--force]
"""
import argparse
import importlib.util
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_REQUIREMENT = "pb1-detectron2==0.6"

# Aliases removed from numpy >= 1.24, mapped to the builtins they always were.
_NUMPY_ALIAS = re.compile(r"\bnp\.(int|float|bool|str|object)\b(?!\w)")


def detectron2_is_installed() -> bool:
    return importlib.util.find_spec("detectron2") is not None


def patch_setup_py(setup_py: Path) -> None:
    """Drop the C extension build and unused requirements; name the distribution ``detectron2``."""
    text = setup_py.read_text()
    patched = re.sub(r"\n\s*ext_modules=get_extensions\(\),", "\n", text)
    patched = re.sub(r"\n\s*cmdclass=\{[^}]*\},", "\n", patched)
    patched = re.sub(r'name="pb1-detectron2"', 'name="detectron2"', patched)
    # Dependencies that detectron2's semantic-segmentation and engine code never imports; black's
    # pin breaks with current click. requirements.txt installs the ones that are used.
    for unused in ("black", "future", "pydot", "hydra-core", "dataclasses"):
        patched = re.sub(rf'\n\s*"{unused}[^"]*",[^\n]*', "", patched)
    if "get_extensions()," in patched or "BuildExtension" in patched.split("setup(", 1)[1]:
        raise RuntimeError(f"could not remove the C extension from {setup_py}; its layout changed")
    setup_py.write_text(patched)


def patch_sources(package_dir: Path) -> int:
    """Rewrite removed numpy aliases and Pillow constants; returns the number of files changed."""
    changed = 0
    for path in package_dir.rglob("*.py"):
        text = path.read_text()
        new = _NUMPY_ALIAS.sub(lambda m: m.group(1), text)
        new = new.replace("Image.LINEAR", "Image.BILINEAR")
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 is importable")
    args = parser.parse_args()
    if detectron2_is_installed() and not args.force:
        print("install_detectron2: an importable detectron2 is present; keeping it.")
        return 0
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory(prefix="ovseg_d2_detectron2_") as tmp:
        tmp = Path(tmp)
        subprocess.run(
            pip + ["download", "-q", "--no-deps", "--no-build-isolation", "--no-binary", ":all:",
                   SDIST_REQUIREMENT, "-d", str(tmp)],
            check=True,
        )
        archives = sorted(tmp.glob("*.tar.gz"))
        if len(archives) != 1:
            raise RuntimeError(f"expected one sdist of {SDIST_REQUIREMENT} in {tmp}, found {archives}")
        with tarfile.open(archives[0]) as tar:
            tar.extractall(tmp, filter="data")
        source = next(p for p in tmp.iterdir() if p.is_dir())
        patch_setup_py(source / "setup.py")
        n = patch_sources(source / "detectron2")
        print(f"install_detectron2: patched {n} source files for numpy>=1.24 / Pillow>=10")
        subprocess.run(pip + ["install", "-q", "--no-deps", "--no-build-isolation", str(source)], check=True)
    print("install_detectron2: installed detectron2 0.6 (Python only, without detectron2._C)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
