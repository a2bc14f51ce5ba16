"""LayerDiffuse (latent transparency, arXiv 2402.17113) for Stable Diffusion WebUI Forge.

Host-independent parts: the transparent VAE decoder/encoder, the method table, the model store, image handling
and infotext. Forge is reached only through `lib_layerdiffusion.hosts`.
"""
from .errors import InvalidArgumentError, LayerDiffuseError, ModelFileError, UnsupportedModelError
from .transparent_vae import (TransparentDecoder, TransparentEncoder, load_transparent_decoder,
                              load_transparent_encoder)

__all__ = [
    "load_transparent_decoder", "load_transparent_encoder", "TransparentDecoder", "TransparentEncoder",
    "LayerDiffuseError", "ModelFileError", "InvalidArgumentError", "UnsupportedModelError",
]
