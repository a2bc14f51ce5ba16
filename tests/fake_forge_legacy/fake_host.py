"""The switch between the two hosts this fake mirrors (README.md). The tests set VARIANT before any host module
is imported (tests/test_forge_legacy_bridge.py legacy_forge()); every fake module reads it once, at import."""
PREVIOUS = "previous"  # lllyasviel/stable-diffusion-webui-forge, tag `previous` = bfee03d8 (A1111 1.8)
REFORGE = "reforge"  # Panchovix/stable-diffusion-webui-reForge main, 3b56b268 (A1111 1.10)
VARIANT = PREVIOUS


def is_reforge() -> bool:
    return VARIANT == REFORGE
