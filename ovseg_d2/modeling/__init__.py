"""Models: backbones, text encoders, heads and meta-architectures (importing registers them)."""
from . import backbone, heads, meta_arch, text  # noqa: F401
