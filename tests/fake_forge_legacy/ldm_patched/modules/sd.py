"""ldm_patched/modules/sd.py VAE and CLIP of both hosts, lines as (bfee03d8 / 3b56b268).

VAE.decode(samples_in) -> B×H×W×3 in [0, 1]; VAE.encode(B×H×W×3 in [0, 1]) -> the latent. bfee03d8 decodes and
encodes through the patcher's model_vae_decode_wrapper / model_vae_encode_wrapper when set, and calls
first_stage_model.encode(pixels) (no regulation). 3b56b268's decode and encode read no wrapper and no
regulation: encode (:889) calls first_stage_model.encode(pixels_in); only the unused encode_inner (:861) reads
model_vae_regulation. (Loading, batching, tiling and the latent packing of 3b56b268 are left out.)"""
import torch

import fake_host
from ldm_patched.ldm.models.autoencoder import AutoencoderKL
from ldm_patched.modules import model_management
from ldm_patched.modules.model_patcher import ModelPatcher

REFORGE = fake_host.is_reforge()


class VAE:  # :165 / :325
    def __init__(self, sd=None, device=None, config=None, dtype=None, no_init=False):
        if no_init:
            return
        self.downscale_ratio = 8
        self.latent_channels = 4
        if REFORGE:
            self.process_input = lambda image: image * 2.0 - 1.0  # :339
            self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)  # :340
        self.first_stage_model = AutoencoderKL().eval()  # :197 / :406 (the SD1.x/SDXL VAE)
        self.patcher = ModelPatcher(self.first_stage_model)  # :219 / :561

    def clone(self):  # :221 / :577
        n = VAE(no_init=True)
        n.__dict__.update(self.__dict__)
        n.patcher = self.patcher.clone()
        return n

    if REFORGE:
        def decode(self, samples_in, vae_options={}):  # :801
            model_management.load_models_gpu([self.patcher])
            out = self.process_output(self.first_stage_model.decode(samples_in, **vae_options).float())  # :813
            return out.movedim(1, -1)

        def encode(self, pixel_samples):  # :889
            pixel_samples = pixel_samples.movedim(-1, 1)
            model_management.load_models_gpu([self.patcher])
            pixels_in = self.process_input(pixel_samples)  # :903
            return self.first_stage_model.encode(pixels_in).float()  # :904
    else:
        def decode_inner(self, samples_in):  # :261
            model_management.load_models_gpu([self.patcher])
            pixel_samples = torch.clamp((self.first_stage_model.decode(samples_in).float() + 1.0) / 2.0, min=0.0,
                                        max=1.0)  # :275
            return pixel_samples.movedim(1, -1)

        def decode(self, samples_in):  # :283
            wrapper = self.patcher.model_options.get('model_vae_decode_wrapper', None)
            if wrapper is None:
                return self.decode_inner(samples_in)
            return wrapper(self.decode_inner, samples_in)

        def encode_inner(self, pixel_samples):  # :295
            pixel_samples = pixel_samples.movedim(-1, 1)
            model_management.load_models_gpu([self.patcher])
            pixels_in = 2. * pixel_samples - 1.
            return self.first_stage_model.encode(pixels_in).float()  # :309

        def encode(self, pixel_samples):  # :317
            wrapper = self.patcher.model_options.get('model_vae_encode_wrapper', None)
            if wrapper is None:
                return self.encode_inner(pixel_samples)
            return wrapper(self.encode_inner, pixel_samples)


class CLIP:  # :100 / :142
    """A stand-in text encoder: encode_from_tokens gives (1, 77, 12), every value the length of the text (so a
    test can tell which text was encoded)."""

    def tokenize(self, text, return_word_ids=False, **kwargs):  # :133 / :206
        return {"l": [[(ord(c), 1.0) for c in text]]}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):  # :136 / :277
        cond = torch.full((1, 77, 12), float(len(tokens["l"][0])))
        pooled = torch.zeros(1, 12)
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond
