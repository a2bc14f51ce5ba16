"""Mirrors modules_forge/forge_sampler.py."""
import torch

from ldm_patched.modules import model_management

prepared = []  # what sampling_prepare was asked to load, in order (for the tests)


class CONDRegular:  # ldm_patched/modules/conds.py CONDRegular: wraps a tensor condition
    def __init__(self, cond):
        self.cond = cond


def sampling_prepare(unet, x):
    """sampling_prepare: model_management.load_models_gpu([unet] + extras) (patching its weights)."""
    prepared.append(unet)
    model_management.load_models_gpu([unet])


def forge_sample_step(unet, x, sigma, cond, uncond):
    """The part of forge_sample(self, denoiser_params, cond_scale, cond_composition) LayerDiffuse relies on:
    extra_concat_condition becomes every cond's model_conds['c_concat'] only when its batch and size match x,
    then each of model_options['conditioning_modifiers'] may swap the model and the conds; the timestep is the
    sigma. Returns (model, cond, uncond) as sampling_function would get them."""
    model = unet.model
    image_cond = unet.extra_concat_condition
    if isinstance(image_cond, torch.Tensor) and image_cond.shape[0] == x.shape[0] \
            and image_cond.shape[2:] == x.shape[2:]:
        for c in cond + (uncond or []):
            c["model_conds"]["c_concat"] = CONDRegular(image_cond)
    timestep = torch.full((x.shape[0],), float(sigma))
    cond_scale, model_options, seed = 5.0, unet.model_options, 0
    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, timestep, uncond, cond, cond_scale, model_options, seed)
    return model, cond, uncond
