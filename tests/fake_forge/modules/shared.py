"""Mirrors modules/shared.py opts (only what LayerDiffuse reads)."""
from types import SimpleNamespace

opts = SimpleNamespace(sd_vae_encode_method="Full")
