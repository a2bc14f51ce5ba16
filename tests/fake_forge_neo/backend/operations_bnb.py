"""Stands in for backend/operations_bnb.py (Forge Neo 6e1e0d5; as Forge main), which needs bitsandbytes and CUDA: a 4-bit NF4
weight (ForgeParams4bit: packed codes, `bnb_quantized`, `quant_state` with the real shape, blocksize 64) in
tests/quant_formats.py's NF4 code, and the functions and loader the operations and the LoRA loader call."""
from types import SimpleNamespace

import torch

from quant_formats import NF4_BLOCKSIZE, nf4_dequantize, nf4_quantize


class ForgeParams4bit(torch.nn.Parameter):  # operations_bnb.py:65 (bitsandbytes Params4bit)
    def __new__(cls, data=None, requires_grad=False, quant_state=None, blocksize=NF4_BLOCKSIZE, quant_type="nf4",
                bnb_quantized=False, **kwargs):
        if not bnb_quantized:  # Params4bit._quantize (on the move to CUDA): here at once
            packed, absmax = nf4_quantize(data, blocksize)
            quant_state = SimpleNamespace(shape=torch.Size(data.shape), absmax=absmax, dtype=data.dtype)
            data = packed
        self = super().__new__(cls, data.data if isinstance(data, torch.nn.Parameter) else data,
                               requires_grad=requires_grad)
        self.quant_state, self.blocksize, self.quant_type = quant_state, blocksize, quant_type
        self.bnb_quantized = True
        self.compress_statistics, self.quant_storage = False, torch.uint8
        return self

    def to(self, *args, **kwargs):  # operations_bnb.py:70: a copy keeps the quant state (no CUDA: no _quantize)
        copy = kwargs.pop("copy", False)
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        return ForgeParams4bit(torch.nn.Parameter.to(self, device=device, dtype=dtype, non_blocking=non_blocking,
                                                     copy=copy),
                               requires_grad=self.requires_grad, quant_state=self.quant_state,
                               blocksize=self.blocksize, quant_type=self.quant_type, bnb_quantized=self.bnb_quantized)


def functional_dequantize_4bit(weight):  # operations_bnb.py:17 (bitsandbytes dequantize_4bit)
    if not weight.bnb_quantized:
        return weight
    return nf4_dequantize(weight.data, weight.quant_state.absmax, weight.quant_state.shape, weight.blocksize).to(
        weight.quant_state.dtype)


def functional_linear_4bits(x, weight, bias):  # operations_bnb.py:11 (bnb.matmul_4bit on the dequantised weight)
    out = torch.nn.functional.linear(x, functional_dequantize_4bit(weight).to(x), bias)
    return out.to(x)


class ForgeLoader4Bit(torch.nn.Module):  # operations_bnb.py:100
    def __init__(self, *, device, dtype, quant_type, **kwargs):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.empty(1, device=device, dtype=dtype))
        self.weight = None
        self.bias = None
        self.quant_type = quant_type

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # :121, the not-prequantised branch
        if prefix + 'weight' in state_dict:
            self.weight = ForgeParams4bit(state_dict[prefix + 'weight'].to(self.dummy), requires_grad=False,
                                          blocksize=64, quant_type=self.quant_type)
        if prefix + 'bias' in state_dict:
            self.bias = torch.nn.Parameter(state_dict[prefix + 'bias'].to(self.dummy))
        del self.dummy

    def reload_weight(self, weight):  # operations_bnb.py:156: quantised again
        self.weight = ForgeParams4bit(weight, requires_grad=False, blocksize=self.weight.blocksize,
                                      quant_type=self.weight.quant_type, bnb_quantized=False)
        return self
