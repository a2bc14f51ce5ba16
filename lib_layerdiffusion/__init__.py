"""LayerDiffuse (latent transparency, arXiv 2402.17113) for Stable Diffusion WebUI Forge.

Host-independent parts: the transparent VAE decoder/encoder, the method table, the model store, image handling
and infotext. Forge is reached only through `lib_layerdiffusion.hosts`.

The public names are imported on first use, so `python -m lib_layerdiffusion.client` (standard library only)
runs without torch.
"""
import importlib

_PUBLIC = {
    "load_transparent_decoder": "networks.transparent_vae", "load_transparent_encoder": "networks.transparent_vae",
    "TransparentDecoder": "networks.transparent_vae", "TransparentEncoder": "networks.transparent_vae",
    "LayerDiffuseError": "errors", "ModelFileError": "errors", "InvalidArgumentError": "errors",
    "UnsupportedModelError": "errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
