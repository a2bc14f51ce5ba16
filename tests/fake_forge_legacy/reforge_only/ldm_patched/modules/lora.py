"""ldm_patched/modules/lora.py calculate_weight (3b56b268 :331) and pad_tensor_to_shape (:298), for the patch
kinds a LayerDiffuse file makes: a weight_adapter (LoRAAdapter) merges itself; a plain "diff" pads the weight only
with {'pad_weight': True}; any other plain kind, "lora" among them, is skipped with a log line."""
import logging

import torch

from ldm_patched.modules import weight_adapter


def pad_tensor_to_shape(tensor, new_shape):  # :298
    if any([new_shape[i] < tensor.shape[i] for i in range(len(new_shape))]):
        raise ValueError("The new shape must be larger than the original tensor in all dimensions")
    padded_tensor = torch.zeros(new_shape, dtype=tensor.dtype, device=tensor.device)
    padded_tensor[tuple(slice(0, dim) for dim in tensor.shape)] = tensor
    return padded_tensor


def calculate_weight(patches, weight, key, intermediate_dtype=torch.float32, original_weights=None):  # :331
    for p in patches:
        strength, v, strength_model, offset, function = p
        if function is None:
            function = lambda a: a  # noqa: E731
        if strength_model != 1.0:
            weight *= strength_model
        if isinstance(v, weight_adapter.WeightAdapterBase):  # :352
            output = v.calculate_weight(weight, key, strength, strength_model, offset, function, intermediate_dtype,
                                        original_weights)
            if output is None:
                logging.warning("Calculate Weight Failed: {} {}".format(v.name, key))
            else:
                weight = output
            continue
        if len(v) == 1:
            patch_type = "diff"
        elif len(v) == 2:
            patch_type, v = v[0], v[1]
        if patch_type == "diff":  # :368
            diff = v[0]
            do_pad_weight = len(v) > 1 and v[1]['pad_weight']
            if do_pad_weight and diff.shape != weight.shape:
                logging.info("Pad weight {} from {} to shape: {}".format(key, weight.shape, diff.shape))
                weight = pad_tensor_to_shape(weight, diff.shape)
            if strength != 0.0:
                if diff.shape != weight.shape:
                    logging.warning("WARNING SHAPE MISMATCH {} WEIGHT NOT MERGED {} != {}".format(
                        key, diff.shape, weight.shape))
                else:
                    weight += function(strength * diff.to(weight))
        else:
            logging.warning("patch type not recognized {} {}".format(patch_type, key))  # :389
    return weight
