"""Mirrors ldm_patched/modules/sd.py: the VAE (encode through its patcher's options) and the CLIP."""
import torch

from ldm_patched.ldm.models.autoencoder import AutoencoderKL
from ldm_patched.modules.model_patcher import ModelPatcher


class VAE:
    def __init__(self, first_stage_model=None, no_init=False):
        if no_init:
            return
        self.first_stage_model = first_stage_model if first_stage_model is not None else AutoencoderKL()
        self.patcher = ModelPatcher(self.first_stage_model)

    def clone(self):  # VAE.clone: a new VAE sharing first_stage_model, with a cloned patcher
        n = VAE(no_init=True)
        n.patcher = self.patcher.clone()
        n.first_stage_model = self.first_stage_model
        return n

    def encode(self, pixel_samples):
        """VAE.encode → encode_inner: B×H×W×3 in [0,1]; the patcher's model_vae_regulation goes to
        first_stage_model.encode (only where this Forge passes it on)."""
        regulation = self.patcher.model_options.get("model_vae_regulation", None)
        pixels = 2.0 * pixel_samples.movedim(-1, 1) - 1.0
        if regulation is None:
            return self.first_stage_model.encode(pixels).float()
        return self.first_stage_model.encode(pixels, regulation).float()


class CLIP:
    """CLIP.tokenize → token/weight pairs per text encoder; CLIP.encode_from_tokens → (1, 77, 12) here, every
    value the length of the text (so a test can tell which text was encoded)."""

    def tokenize(self, text, return_word_ids=False):
        return {"l": [[(ord(c), 1.0) for c in text]]}

    def encode_from_tokens(self, tokens, return_pooled=False):
        cond = torch.full((1, 77, 12), float(len(tokens["l"][0])))
        return (cond, torch.zeros(1, 12)) if return_pooled else cond
