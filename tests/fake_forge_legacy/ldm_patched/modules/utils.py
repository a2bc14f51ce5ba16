"""Mirrors ldm_patched/modules/utils.py get_attr / set_attr_raw: dotted paths, list indices as names."""


def get_attr(obj, attr):
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr_raw(obj, attr, value):
    *path, last = attr.split(".")
    for name in path:
        obj = getattr(obj, name)
    setattr(obj, last, value)
