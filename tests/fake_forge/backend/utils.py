"""Mirrors backend/utils.py (Forge dfdcbab6): the dotted-path attribute helpers the patchers use."""


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
