"""Mirrors backend/utils.py (Forge Neo 6e1e0d5): attribute paths and the dict join sampling_function uses."""
import torch


def set_attr(obj, attr, value):  # backend/utils.py:107 — every value is wrapped in a Parameter
    set_attr_raw(obj, attr, torch.nn.Parameter(value, requires_grad=False))


def set_attr_raw(obj, attr, value):  # backend/utils.py:111
    attrs = attr.split(".")
    for name in attrs[:-1]:
        obj = getattr(obj, name)
    setattr(obj, attrs[-1], value)


def copy_to_param(obj, attr, value):  # backend/utils.py:118
    attrs = attr.split(".")
    for name in attrs[:-1]:
        obj = getattr(obj, name)
    prev = getattr(obj, attrs[-1])
    prev.data.copy_(value)


def get_attr(obj, attr):  # backend/utils.py:126
    attrs = attr.split(".")
    for name in attrs:
        obj = getattr(obj, name)
    return obj


def get_attr_with_parent(obj, attr):  # backend/utils.py:133
    attrs = attr.split(".")
    parent = obj
    name = None
    for name in attrs:
        parent = obj
        obj = getattr(obj, name)
    return parent, name, obj


def tensor2parameter(x):  # backend/utils.py:178
    if isinstance(x, torch.nn.Parameter):
        return x
    return torch.nn.Parameter(x, requires_grad=False)


def join_dicts(base_dict, update_dict):  # backend/utils.py:310
    if not update_dict:
        return (base_dict or {}).copy()
    result = (base_dict or {}).copy()
    for key, value in update_dict.items():
        if key in result and isinstance(result[key], dict) and isinstance(value, dict):
            result[key] = join_dicts(result[key], value)
        elif key in result and isinstance(result[key], list) and isinstance(value, list):
            result[key] = result[key] + value
        else:
            result[key] = value
    return result


def load_torch_file(ckpt, safe_load=False, device=None, *, return_metadata=False):  # backend/utils.py (the .gguf branch, 79-83)
    import gguf  # Neo imports its vendored gguf-py (modules_forge/packages/gguf); the fake the `gguf` package

    from backend.operations_gguf import ParameterGGUF

    if not ckpt.lower().endswith(".gguf"):
        raise NotImplementedError("the fake loads GGUF files only")
    reader = gguf.GGUFReader(ckpt)
    sd = {}
    for tensor in reader.tensors:
        sd[str(tensor.name)] = ParameterGGUF(tensor)
    return sd
