"""Mirrors backend/operations.py (Forge Neo 6e1e0d5): the weight cast that adds online LoRAs (weights_manual_cast),
the GGUF and bnb 4-bit Linear layers, and using_forge_operations. Streams are left out (no CUDA here)."""
import contextlib

import torch

from backend import utils
from backend.patcher.lora import merge_lora_to_weight


def weights_manual_cast(layer, x, skip_weight_dtype=False, skip_bias_dtype=False, weight_fn=None, bias_fn=None, *, dtype=None, _cast=True, _scale=True):  # operations.py:68
    weight, bias = None, None
    target_dtype, target_device = x.dtype, x.device
    weight_has_function = weight_fn is not None
    bias_has_function = bias_fn is not None

    non_blocking = False

    weight_args = dict(device=target_device, dtype=dtype or target_dtype, non_blocking=non_blocking)
    if skip_weight_dtype or weight_has_function:
        weight_args.pop("dtype")

    bias_args = dict(device=target_device, dtype=target_dtype, non_blocking=non_blocking)
    if skip_bias_dtype or bias_has_function:
        bias_args.pop("dtype")

    offload_stream = None

    if not _cast:  # operations.py:86: cast_to breaks BnB & GGUF
        if layer.weight is not None:
            weight = layer.weight.to(**weight_args, copy=True)
        if layer.bias is not None:
            bias = layer.bias.to(**bias_args, copy=True)
    else:
        raise NotImplementedError("the fake casts quantised layers only (_cast=False)")

    if not _scale:
        return weight, bias, (offload_stream, weight, bias)

    weight_a = weight
    bias_a = bias

    if weight_has_function:  # operations.py:113
        weight = weight_fn(weight)
        if not skip_weight_dtype:
            weight = weight.to(dtype=target_dtype)

    if bias_has_function:
        bias = bias_fn(bias)
        if not skip_bias_dtype:
            bias = bias.to(dtype=target_dtype)

    scale_weight = getattr(layer, "scale_weight", None)
    if weight is not None and scale_weight is not None:
        weight = weight * scale_weight.to(weight)

    loras = getattr(layer, "forge_online_loras", dict())  # operations.py:127

    weight_patches = loras.get("weight", None)
    bias_patches = loras.get("bias", None)

    if weight is not None and weight_patches is not None:
        weight = merge_lora_to_weight(patches=weight_patches, weight=weight, key="online weight lora", computation_dtype=weight.dtype)

    if bias is not None and bias_patches is not None:
        bias = merge_lora_to_weight(patches=bias_patches, weight=bias, key="online bias lora", computation_dtype=bias.dtype)

    return weight, bias, (offload_stream, weight_a, bias_a)


@contextlib.contextmanager
def main_stream_worker(weight, bias, offload_stream):  # operations.py:142: without a stream, nothing to wait for
    yield


current_device, current_dtype, current_manual_cast_enabled, current_bnb_dtype = None, None, False, None


class ForgeOperations:  # operations.py:167 (only what a quantised Flux's linears use)
    Linear = torch.nn.Linear


from backend.operations_bnb import ForgeLoader4Bit, functional_dequantize_4bit, functional_linear_4bits  # noqa: E402


class ForgeOperationsBNB4bits(ForgeOperations):  # operations.py:581
    class Linear(ForgeLoader4Bit):
        def __init__(self, *args, **kwargs):
            super().__init__(device=current_device, dtype=current_dtype, quant_type=current_bnb_dtype)
            self.parameters_manual_cast = current_manual_cast_enabled

        def forward(self, x):  # operations.py:587
            if self.bias is not None and self.bias.dtype != x.dtype:
                self.bias = utils.tensor2parameter(self.bias.to(x.dtype))

            if hasattr(self, "forge_online_loras"):
                weight, bias, signal = weights_manual_cast(self, x, weight_fn=functional_dequantize_4bit, skip_bias_dtype=True, _cast=False)
                with main_stream_worker(weight, bias, signal):
                    return torch.nn.functional.linear(x, weight, bias)

            if not self.parameters_manual_cast:
                return functional_linear_4bits(x, self.weight, self.bias)
            raise NotImplementedError("the fake has no manual cast of bnb weights (CUDA only in Neo)")


from backend.operations_gguf import dequantize_tensor  # noqa: E402


class ForgeOperationsGGUF(ForgeOperations):  # operations.py:618
    class Linear(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            self.dummy = {"device": current_device, "dtype": current_dtype}
            self.weight = None
            self.bias = None

        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # operations.py:626
            if hasattr(self, "dummy"):
                if (computation_dtype := self.dummy["dtype"]) not in [torch.float16, torch.bfloat16]:
                    computation_dtype = torch.float16

                if prefix + "weight" in state_dict:
                    self.weight = state_dict[prefix + "weight"].to(device=self.dummy["device"])
                    self.weight.computation_dtype = computation_dtype
                if prefix + "bias" in state_dict:
                    self.bias = state_dict[prefix + "bias"].to(device=self.dummy["device"])
                    self.bias.computation_dtype = computation_dtype

                del self.dummy
            else:
                if prefix + "weight" in state_dict:
                    self.weight = state_dict[prefix + "weight"]
                if prefix + "bias" in state_dict:
                    self.bias = state_dict[prefix + "bias"]

        def forward(self, x):  # operations.py:650
            if self.bias is not None and self.bias.dtype != x.dtype:
                self.bias = utils.tensor2parameter(dequantize_tensor(self.bias).to(x.dtype))
            if self.weight is not None and self.weight.dtype != x.dtype and getattr(self.weight, "gguf_cls", None) is None:
                self.weight = utils.tensor2parameter(self.weight.to(x.dtype))

            weight, bias, signal = weights_manual_cast(self, x, weight_fn=dequantize_tensor, skip_bias_dtype=True, _cast=False)
            with main_stream_worker(weight, bias, signal):
                return torch.nn.functional.linear(x, weight, bias)


@contextlib.contextmanager
def using_forge_operations(operations=None, device=None, dtype=None, manual_cast_enabled=False, bnb_dtype=None):  # :779
    global current_device, current_dtype, current_manual_cast_enabled, current_bnb_dtype

    current_device, current_dtype, current_manual_cast_enabled, current_bnb_dtype = device, dtype, manual_cast_enabled, bnb_dtype

    if operations is None:  # operations.py:807
        if bnb_dtype in ["gguf"]:
            operations = ForgeOperationsGGUF
        elif bnb_dtype in ["nf4", "fp4"]:
            operations = ForgeOperationsBNB4bits
        else:
            operations = ForgeOperations

    op_names = ("Linear",)  # operations.py:824 swaps eight; the Flux stand-in has linears only
    backups = {op_name: getattr(torch.nn, op_name) for op_name in op_names}

    try:
        for op_name in op_names:
            setattr(torch.nn, op_name, getattr(operations, op_name))

        yield

    finally:
        for op_name in op_names:
            setattr(torch.nn, op_name, backups[op_name])
