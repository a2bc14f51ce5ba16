"""Mirrors backend/sampling/sampling_function.py (Forge Neo 6e1e0d5): how one denoising step reaches the model.

sampling_function applies UnetPatcher.extra_concat_condition as c_concat ONLY when the checkpoint is an
inpainting one (sd_model.is_inpaint), then runs model_options['conditioning_modifiers'] in order; the batched
call goes through model_options['model_function_wrapper'] when set. Areas, masks, ControlNet and the cfg
function hooks are left out (LayerDiffuse sets none of them)."""
import collections
import math

import torch

from backend import memory_management, utils
from backend.sampling.condition import (
    Condition,
    compile_conditions,
    compile_weighted_conditions,
)


def get_area_and_mult(conds, x_in, timestep_in):  # sampling_function.py:24 (no area, mask or timestep range)
    area = (x_in.shape[2], x_in.shape[3], 0, 0)
    strength = conds.get("strength", 1.0)
    input_x = x_in[:, :, area[2]:area[0] + area[2], area[3]:area[1] + area[3]]
    mult = torch.ones_like(input_x) * strength
    conditioning = {}
    model_conds = conds["model_conds"]
    for c in model_conds:  # sampling_function.py:73
        conditioning[c] = model_conds[c].process_cond(batch_size=x_in.shape[0], device=x_in.device, area=area)
    control = conds.get("control", None)
    patches = None
    cond_obj = collections.namedtuple("cond_obj", ["input_x", "mult", "conditioning", "area", "control", "patches"])
    return cond_obj(input_x, mult, conditioning, area, control, patches)


def cond_equal_size(c1, c2):  # sampling_function.py:83
    if c1 is c2:
        return True
    if c1.keys() != c2.keys():
        return False
    for k in c1:
        if not c1[k].can_concat(c2[k]):
            return False
    return True


def can_concat_cond(c1, c2):  # sampling_function.py:94
    if c1.input_x.shape != c2.input_x.shape:
        return False

    def objects_concatable(obj1, obj2):
        if (obj1 is None) != (obj2 is None):
            return False
        if obj1 is not None:
            if obj1 is not obj2:
                return False
        return True

    if not objects_concatable(c1.control, c2.control):
        return False
    if not objects_concatable(c1.patches, c2.patches):
        return False
    return cond_equal_size(c1.conditioning, c2.conditioning)


def cond_cat(c_list):  # sampling_function.py:115
    temp = {}
    for x in c_list:
        for k in x:
            cur = temp.get(k, [])
            cur.append(x[k])
            temp[k] = cur
    out = {}
    for k in temp:
        conds = temp[k]
        out[k] = conds[0].concat(conds[1:])
    return out


def compute_cond_mark(cond_or_uncond, sigmas):  # sampling_function.py:136
    cond_or_uncond_size = int(sigmas.shape[0])
    cond_mark = []
    for cx in cond_or_uncond:
        cond_mark += [cx] * cond_or_uncond_size
    return torch.Tensor(cond_mark).to(sigmas)


def compute_cond_indices(cond_or_uncond, sigmas):  # sampling_function.py:147
    cl = int(sigmas.shape[0])
    cond_indices = []
    uncond_indices = []
    for i, cx in enumerate(cond_or_uncond):
        if cx == 0:
            cond_indices += list(range(i * cl, (i + 1) * cl))
        else:
            uncond_indices += list(range(i * cl, (i + 1) * cl))
    return cond_indices, uncond_indices


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):  # sampling_function.py:161
    out_cond = torch.zeros_like(x_in)
    out_count = torch.ones_like(x_in) * 1e-37
    out_uncond = torch.zeros_like(x_in)
    out_uncond_count = torch.ones_like(x_in) * 1e-37
    COND = 0
    UNCOND = 1

    to_run = []
    for x in cond:
        p = get_area_and_mult(x, x_in, timestep)
        if p is None:
            continue
        to_run += [(p, COND)]
    if uncond is not None:
        for x in uncond:
            p = get_area_and_mult(x, x_in, timestep)
            if p is None:
                continue
            to_run += [(p, UNCOND)]

    while len(to_run) > 0:
        first = to_run[0]
        first_shape = first[0][0].shape
        to_batch_temp = []
        for x in range(len(to_run)):
            if can_concat_cond(to_run[x][0], first[0]):
                to_batch_temp += [x]
        to_batch_temp.reverse()
        to_batch = to_batch_temp[:1]
        free_memory = memory_management.get_free_memory(x_in.device)
        for i in range(1, len(to_batch_temp) + 1):  # sampling_function.py:213
            batch_amount = to_batch_temp[:len(to_batch_temp) // i]
            input_shape = [len(batch_amount) * first_shape[0]] + list(first_shape)[1:]
            if model.memory_required(input_shape) < free_memory:
                to_batch = batch_amount
                break

        input_x = []
        mult = []
        c = []
        cond_or_uncond = []
        area = []
        for x in to_batch:
            o = to_run.pop(x)
            p = o[0]
            input_x.append(p.input_x)
            mult.append(p.mult)
            c.append(p.conditioning)
            area.append(p.area)
            cond_or_uncond.append(o[1])

        batch_chunks = len(cond_or_uncond)
        input_x = torch.cat(input_x)
        c = cond_cat(c)
        timestep_ = torch.cat([timestep] * batch_chunks)

        transformer_options = {}
        if "transformer_options" in model_options:
            transformer_options = model_options["transformer_options"].copy()
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]  # sampling_function.py:258
        transformer_options["sigmas"] = timestep
        transformer_options["cond_mark"] = compute_cond_mark(cond_or_uncond=cond_or_uncond, sigmas=timestep)
        transformer_options["cond_indices"], transformer_options["uncond_indices"] = compute_cond_indices(
            cond_or_uncond=cond_or_uncond, sigmas=timestep)
        c["transformer_options"] = transformer_options

        if "model_function_wrapper" in model_options:  # sampling_function.py:275
            output = model_options["model_function_wrapper"](model.apply_model, {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond}).chunk(batch_chunks)
        else:
            output = model.apply_model(input_x, timestep_, **c).chunk(batch_chunks)
        del input_x

        for o in range(batch_chunks):
            if cond_or_uncond[o] == COND:
                out_cond += output[o] * mult[o]
                out_count += mult[o]
            else:
                out_uncond += output[o] * mult[o]
                out_uncond_count += mult[o]
        del mult

    out_cond /= out_count
    out_uncond /= out_uncond_count
    return out_cond, out_uncond


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None,
                            return_full=False):  # sampling_function.py:297 (no cfg hooks)
    edit_strength = sum((item["strength"] if "strength" in item else 1) for item in cond)
    if math.isclose(cond_scale, 1.0) and model_options.get("disable_cfg1_optimization", False) is False:
        uncond_ = None
    else:
        uncond_ = uncond
    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)
    if not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    if return_full:
        return cfg_result, cond_pred, uncond_pred
    return cfg_result


def sampling_function(self, denoiser_params, cond_scale, cond_composition, extra_model_options=None):
    """sampling_function.py:328. `self` is modules/sd_samplers_cfg_denoiser.py CFGDenoiser: self.inner_model.
    inner_model is the sd_model (ForgeDiffusionEngine), self.p the processing object."""
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    control = unet_patcher.controlnet_linked_list
    extra_concat_condition = unet_patcher.extra_concat_condition
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = utils.join_dicts(unet_patcher.model_options, extra_model_options)
    seed = self.p.seeds[0]

    if extra_concat_condition is not None:
        image_cond_in = extra_concat_condition
    else:
        image_cond_in = denoiser_params.image_cond

    # sampling_function.py:345: only inpainting checkpoints get the concat condition
    if isinstance(image_cond_in, torch.Tensor) and self.inner_model.inner_model.is_inpaint:
        if image_cond_in.shape[0] == x.shape[0] and image_cond_in.shape[2] == x.shape[2] and image_cond_in.shape[3] == x.shape[3]:
            if uncond is not None:
                for i in range(len(uncond)):
                    uncond[i]["model_conds"]["c_concat"] = Condition(image_cond_in)
            for i in range(len(cond)):
                cond[i]["model_conds"]["c_concat"] = Condition(image_cond_in)

    if control is not None:
        for h in cond:
            h["control"] = control
        if uncond is not None:
            for h in uncond:
                h["control"] = control

    for modifier in model_options.get("conditioning_modifiers", []):  # sampling_function.py:360
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed)

    denoised, cond_pred, uncond_pred = sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed, return_full=True)
    return denoised, cond_pred, uncond_pred


def sampling_prepare(unet, x):  # sampling_function.py:367
    shape = list(x.shape)
    mem_shape = [2 * shape[0]] + shape[1:]
    unet_inference_memory = unet.memory_required(mem_shape)
    additional_inference_memory = unet.extra_preserved_memory_during_sampling
    additional_model_patchers = unet.extra_model_patchers_during_sampling
    if unet.controlnet_linked_list is not None:
        additional_inference_memory += unet.controlnet_linked_list.inference_memory_requirements(unet.model_dtype())
        additional_model_patchers += unet.controlnet_linked_list.get_models()
    memory_management.load_models_gpu(models=[unet] + additional_model_patchers, memory_required=unet_inference_memory + additional_inference_memory, minimum_memory_required=unet_inference_memory // 2 + additional_inference_memory)
    real_model = unet.model
    percent_to_timestep_function = lambda p: real_model.predictor.percent_to_sigma(p)
    for cnet in unet.list_controlnets():
        cnet.pre_run(real_model, percent_to_timestep_function)


def sampling_cleanup(unet):  # sampling_function.py:398
    for cnet in unet.list_controlnets():
        cnet.cleanup()
    memory_management.soft_empty_cache()
