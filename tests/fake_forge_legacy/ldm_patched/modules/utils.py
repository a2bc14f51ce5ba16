"""ldm_patched/modules/utils.py get_attr / set_attr of both hosts (dotted paths, list indices as names). They
differ: bfee03d8 set_attr wraps the value in a Parameter and set_attr_raw sets it as it is; 3b56b268 set_attr sets
it as it is and returns the previous value, set_attr_param wraps it."""
import torch

import fake_host


def get_attr(obj, attr):  # :303 / :735
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def _parent(obj, attr):
    *path, last = attr.split(".")
    for name in path:
        obj = getattr(obj, name)
    return obj, last


if fake_host.is_reforge():
    def set_attr(obj, attr, value):  # :716 (3b56b268)
        obj, last = _parent(obj, attr)
        prev = getattr(obj, last)
        setattr(obj, last, value)
        return prev

    def set_attr_param(obj, attr, value):  # :724 (3b56b268)
        return set_attr(obj, attr, torch.nn.Parameter(value, requires_grad=False))
else:
    def set_attr(obj, attr, value):  # :281 (bfee03d8)
        obj, last = _parent(obj, attr)
        setattr(obj, last, torch.nn.Parameter(value, requires_grad=False))

    def set_attr_raw(obj, attr, value):  # :289 (bfee03d8)
        obj, last = _parent(obj, attr)
        setattr(obj, last, value)
