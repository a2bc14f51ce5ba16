"""Mirrors modules/shared.py: opts (data, add_option, the values LayerDiffuse reads) and OptionInfo."""


class OptionInfo:  # modules/options.py OptionInfo
    def __init__(self, default=None, label="", component=None, component_args=None, section=None, **kwargs):
        self.default, self.label, self.component = default, label, component
        self.component_args, self.section = component_args, section


class Options:  # modules/options.py Options: saved values in .data, registered options in .data_labels
    def __init__(self):
        self.data = {}
        self.data_labels = {}
        self.sd_vae_encode_method = "Full"
        self.sd_vae_decode_method = "Full"  # shared_options.py:214 "VAE type for decode"
        self.samples_format = "png"
        self.enable_pnginfo = True
        self.samples_save = True  # "Always save all generated images"

    def add_option(self, key, info):
        self.data_labels[key] = info


opts = Options()
