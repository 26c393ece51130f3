"""ovseg_d2: open-vocabulary semantic segmentation for detectron2.

Install with `make setup` (see README): torch, torchvision and detectron2 need the special
handling in tools/setup_env.sh, so they are not install_requires here; everything else is
pinned in requirements.txt and constraints.txt.
"""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="ovseg_d2",
    version="0.1.0",
    description="Open-vocabulary semantic segmentation (Talk2DINO, CAT-Seg, CLIPSelf) for detectron2",
    long_description=Path(__file__).with_name("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ovseg_d2", "ovseg_d2.*"]),
    package_data={"ovseg_d2": ["data/class_names/*.json", "modeling/backbone/clip_model_configs/*.json"]},
    install_requires=[
        # Checked but never upgraded by pip: tools/setup_env.sh installs these first.
        "torch>=2.1",
        "open_clip_torch>=3.0",
        "timm>=1.0",
        "fvcore",
        "pycocotools",
    ],
    zip_safe=False,
)
