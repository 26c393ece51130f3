"""Converters from official raw releases to the registered layouts (used by datasets/prepare_*.py)."""
