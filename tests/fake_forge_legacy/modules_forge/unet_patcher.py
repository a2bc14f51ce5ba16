"""modules_forge/unet_patcher.py UnetPatcher of both hosts, lines as (bfee03d8 / 3b56b268): a ModelPatcher with
Forge's sampling extras; its clone carries extra_concat_condition (and in 3b56b268 shares the parent's backups
and keeps the parent, as its ModelPatcher.clone does)."""
import copy

import fake_host
from ldm_patched.modules.model_patcher import ModelPatcher


class UnetPatcher(ModelPatcher):  # :9 / :10
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling = []
        self.extra_concat_condition = None

    def clone(self):  # :17 / :19
        n = UnetPatcher(self.model, self.load_device, self.offload_device, self.size)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        if fake_host.is_reforge():  # :30 .. :34
            n.patches_uuid = self.patches_uuid
            n.backup = self.backup
            n.object_patches_backup = self.object_patches_backup
            n.parent = self
        else:
            n.model_keys = self.model_keys  # :27
        return n

    def list_controlnets(self):  # :70 / :166
        return []

    def append_model_option(self, k, v, ensure_uniqueness=False):  # :78 / :174
        if k not in self.model_options:
            self.model_options[k] = []
        if ensure_uniqueness and v in self.model_options[k]:
            return
        self.model_options[k].append(v)

    def set_transformer_option(self, k, v):  # :103 / :199
        if 'transformer_options' not in self.model_options:
            self.model_options['transformer_options'] = {}
        self.model_options['transformer_options'][k] = v

    def add_conditioning_modifier(self, modifier, ensure_uniqueness=False):  # :110 / :206
        self.append_model_option('conditioning_modifiers', modifier, ensure_uniqueness)
