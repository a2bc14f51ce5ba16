"""Mirrors modules_forge/unet_patcher.py UnetPatcher (a ModelPatcher with Forge's sampling extras)."""
from ldm_patched.modules.model_patcher import ModelPatcher


class UnetPatcher(ModelPatcher):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_concat_condition = None

    def clone(self):  # UnetPatcher.clone: also carries extra_concat_condition
        n = UnetPatcher(self.model, self.load_device, self.offload_device)
        self._copy_into(n)
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_concat_condition = self.extra_concat_condition
        return n

    def append_model_option(self, k, v, ensure_uniqueness=False):  # UnetPatcher.append_model_option
        options = self.model_options.setdefault(k, [])
        if not (ensure_uniqueness and v in options):
            options.append(v)

    def set_transformer_option(self, k, v):  # UnetPatcher.set_transformer_option
        self.model_options.setdefault("transformer_options", {})[k] = v

    def add_conditioning_modifier(self, modifier, ensure_uniqueness=False):  # UnetPatcher.add_conditioning_modifier
        self.append_model_option("conditioning_modifiers", modifier, ensure_uniqueness)
