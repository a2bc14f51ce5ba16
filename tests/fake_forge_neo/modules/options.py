"""Mirrors modules/options.py OptionInfo and Options (Forge Neo 6e1e0d5): saved values in .data, registered
options in .data_labels, unsaved values read as their defaults."""


class OptionInfo:  # options.py:13
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default, self.label, self.component = default, label, component
        self.component_args, self.section = component_args, section


class Options:  # options.py:96
    def __init__(self, defaults):
        super().__setattr__("data", {})
        super().__setattr__("data_labels", dict(defaults))

    def __getattr__(self, item):  # options.py:145
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value

    def add_option(self, key, info):  # options.py:270
        self.data_labels[key] = info
