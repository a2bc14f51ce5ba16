"""Mirrors backend/sampling/sampling_function.py."""
import torch

from backend import memory_management

prepared = []  # what sampling_prepare was asked to load, in order (for the tests)


def sampling_prepare(unet, x):
    """sampling_prepare (:366): loads the patcher onto the device (memory_management.load_models_gpu, :383): its
    clones give way, its object patches go in, its LoRAs are merged."""
    prepared.append(unet)
    memory_management.load_models_gpu(models=[unet])


def sampling_step(unet, x, sigma, cond, uncond):
    """The part of sampling_function(self, denoiser_params, cond_scale, cond_composition) LayerDiffuse relies
    on: the extra concat condition is set as c_concat only when its batch matches x's, the patcher's ControlNets
    as every cond's 'control', then every
    conditioning modifier may swap the model and the conds. Returns (model, cond, uncond) as the sampler
    would use them."""
    model = unet.model
    image_cond = unet.extra_concat_condition
    if isinstance(image_cond, torch.Tensor) and image_cond.shape[0] == x.shape[0] \
            and image_cond.shape[2:] == x.shape[2:]:
        for c in cond + (uncond or []):
            c["model_conds"]["c_concat"] = image_cond
    control = unet.controlnet_linked_list  # sampling_function.py:328, read before the modifiers run
    if control is not None:  # :352-357: every cond and uncond carries it into calc_cond_uncond_batch
        for c in cond + (uncond or []):
            c["control"] = control
    timestep = torch.full((x.shape[0],), float(sigma))
    cond_scale, model_options, seed = 5.0, unet.model_options, 0
    for modifier in unet.model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, timestep, uncond, cond, cond_scale, model_options, seed)
    return model, cond, uncond
