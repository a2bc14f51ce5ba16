"""Mirrors backend/utils.py (Forge main dfdcbab6): loading a GGUF file and the attribute paths the LoRA loader uses."""
import gguf  # Forge imports its vendored gguf-py (packages_3rdparty/gguf); the fake the `gguf` package
import torch

from backend.operations_gguf import ParameterGGUF


def load_torch_file(ckpt, safe_load=False, device=None):  # utils.py:22 (the .gguf branch, 27-31)
    if not ckpt.lower().endswith(".gguf"):
        raise NotImplementedError("the fake loads GGUF files only")
    reader = gguf.GGUFReader(ckpt)
    sd = {}
    for tensor in reader.tensors:
        sd[str(tensor.name)] = ParameterGGUF(tensor)
    return sd


def set_attr(obj, attr, value):  # utils.py:50
    attrs = attr.split(".")
    for name in attrs[:-1]:
        obj = getattr(obj, name)
    setattr(obj, attrs[-1], torch.nn.Parameter(value, requires_grad=False))


def set_attr_raw(obj, attr, value):  # utils.py:57
    attrs = attr.split(".")
    for name in attrs[:-1]:
        obj = getattr(obj, name)
    setattr(obj, attrs[-1], value)


def get_attr(obj, attr):  # utils.py:72
    attrs = attr.split(".")
    for name in attrs:
        obj = getattr(obj, name)
    return obj


def get_attr_with_parent(obj, attr):  # utils.py:79
    attrs = attr.split(".")
    parent = obj
    name = None
    for name in attrs:
        parent = obj
        obj = getattr(obj, name)
    return parent, name, obj


def tensor2parameter(x):  # utils.py:97
    if isinstance(x, torch.nn.Parameter):
        return x
    else:
        return torch.nn.Parameter(x, requires_grad=False)
