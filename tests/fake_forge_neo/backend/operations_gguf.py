"""Mirrors backend/operations_gguf.py (Forge Neo 6e1e0d5): ParameterGGUF and dequantize_tensor. The quant classes
are tests/quant_formats.py's stand-ins for modules_forge/packages/gguf/quants.py (same interface, gguf-py's decoding)."""
import gguf
import torch

from quant_formats import gguf_quant_class

QUANTS_MAPPING = {  # operations_gguf.py:5-17
    t: gguf_quant_class(t) for t in (
        gguf.GGMLQuantizationType.Q2_K, gguf.GGMLQuantizationType.Q3_K, gguf.GGMLQuantizationType.Q4_0,
        gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q5_0,
        gguf.GGMLQuantizationType.Q5_1, gguf.GGMLQuantizationType.Q5_K, gguf.GGMLQuantizationType.Q6_K,
        gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.BF16)
}


class ParameterGGUF(torch.nn.Parameter):  # operations_gguf.py:20
    def __init__(self, tensor=None, requires_grad=False, no_init=False):
        super().__init__()
        if no_init:
            return

        self.gguf_cls = QUANTS_MAPPING.get(tensor.tensor_type, None)
        self.real_shape = torch.Size(reversed(list(tensor.shape)))
        self.computation_dtype = torch.float16
        self.baked = False
        return

    @property
    def shape(self):
        return self.real_shape

    def __new__(cls, tensor=None, requires_grad=False, no_init=False):
        return super().__new__(cls, torch.tensor(tensor.data), requires_grad=requires_grad)

    def dequantize_as_pytorch_parameter(self):
        if self.gguf_cls is not None:
            self.gguf_cls.bake(self)
        return torch.nn.Parameter(dequantize_tensor(self), requires_grad=False)

    def copy_with_data(self, data):
        new = ParameterGGUF(data, no_init=True)
        new.gguf_cls = self.gguf_cls
        new.real_shape = self.real_shape
        new.computation_dtype = self.computation_dtype
        new.baked = self.baked
        return new

    def to(self, *args, **kwargs):
        return self.copy_with_data(self.data.to(*args, **kwargs))


def dequantize_tensor(tensor):  # operations_gguf.py:58
    if tensor is None:
        return None

    if not hasattr(tensor, 'gguf_cls'):
        return tensor

    gguf_cls = tensor.gguf_cls

    if gguf_cls is None:
        return tensor

    return gguf_cls.dequantize_pytorch(tensor)
