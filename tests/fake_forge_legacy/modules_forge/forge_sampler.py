"""modules_forge/forge_sampler.py of both hosts (the same code at bfee03d8 and 3b56b268 for what is here).

sampling_prepare(unet, x) (:92 / :116) loads the UNet patcher the sampler will use (model_management.
load_models_gpu). forge_sample (:56) is called by the CFG denoiser at every step; here it takes the patcher, x,
sigma and the conds directly instead of (self, denoiser_params, cond_scale, cond_composition), does what the host
does before sampling_function, and returns what sampling_function would be called with (also kept in `sampled`):
  - extra_concat_condition (else the denoiser's image_cond) becomes every cond's and uncond's
    model_conds['c_concat'] only when its batch and size match x (:67 .. :79);
  - then every model_options['conditioning_modifiers'] entry may swap the model, x, timestep and conds
    (:85 / :103); the timestep is the sigma, one per row."""
import torch

from ldm_patched.modules import model_management
from ldm_patched.modules.conds import CONDRegular

sampled = []  # (model, x, timestep, uncond, cond, cond_scale, model_options, seed) per call, for the tests


def forge_sample(unet, x, sigma, cond, uncond, image_cond=None, cond_scale=7.0, seed=0):  # :56
    model = unet.model
    extra_concat_condition = unet.extra_concat_condition
    timestep = torch.full((x.shape[0],), float(sigma))
    model_options = unet.model_options
    image_cond_in = extra_concat_condition if extra_concat_condition is not None else image_cond
    if isinstance(image_cond_in, torch.Tensor):
        if image_cond_in.shape[0] == x.shape[0] and image_cond_in.shape[2] == x.shape[2] \
                and image_cond_in.shape[3] == x.shape[3]:
            for c in (uncond or []) + cond:
                c['model_conds']['c_concat'] = CONDRegular(image_cond_in)
    for modifier in model_options.get('conditioning_modifiers', []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, timestep, uncond, cond, cond_scale, model_options, seed)
    call = (model, x, timestep, uncond, cond, cond_scale, model_options, seed)
    sampled.append(call)
    return call


def sampling_prepare(unet, x):  # :92 / :116
    B, C, H, W = x.shape
    memory_estimation_function = unet.model_options.get('memory_peak_estimation_modifier', unet.memory_required)
    unet_inference_memory = memory_estimation_function([B * 2, C, H, W])
    model_management.load_models_gpu(
        models=[unet] + unet.extra_model_patchers_during_sampling,
        memory_required=unet_inference_memory + unet.extra_preserved_memory_during_sampling)
