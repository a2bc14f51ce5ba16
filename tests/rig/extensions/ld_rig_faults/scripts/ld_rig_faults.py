"""Rig-only extension (never shipped): injects one failure into LayerDiffuse's own code for one request, so that
tests/rig/failure_paths.py can show what a REAL Forge does with it (the message reaches the API's error body, the
next request is unaffected). Sorted before LayerDiffuse; the fault is put in at `process` and taken out at
`postprocess` (and before the next request in any case).

    "alwayson_scripts": {"LD rig faults": {"args": ["decode"]}}    # "patch", "encoder", "decode" or "none"
"""
import logging
import sys

import torch

from modules import scripts

log = logging.getLogger("ld_rig_faults")
_undo = []


def _out_of_memory(*args, **kwargs):
    error = getattr(torch, "OutOfMemoryError", RuntimeError)
    raise error("CUDA out of memory. Tried to allocate 2.00 GiB (rig fault injection)")


def _replace(module_name, owner_path, attribute):
    owner = sys.modules[module_name]
    for part in owner_path:
        owner = getattr(owner, part)
    _undo.append((owner, attribute, getattr(owner, attribute)))
    setattr(owner, attribute, _out_of_memory)


FAULTS = {  # where a real out-of-memory would strike
    "patch": ("lib_layerdiffusion.hosts.apply_plan", (), "parse_patch_file"),  # reading the weight patch
    "encoder": ("lib_layerdiffusion.generation", (), "aligned_rgba"),  # the init image's transparency encode
    "decode": ("lib_layerdiffusion.networks.transparent_vae", ("TransparentDecoder",), "decode"),
}


def _restore():
    while _undo:
        owner, attribute, value = _undo.pop()
        setattr(owner, attribute, value)


class LayerDiffuseRigFaults(scripts.Script):
    sorting_priority = 0

    def title(self):
        return "LD rig faults"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr
        return [gr.Dropdown(label=self.title(), choices=["none", *FAULTS], value="none")]

    def process(self, p, fault="none", *args):
        _restore()
        if fault in FAULTS:
            _replace(*FAULTS[fault])
            print(f"[LD rig faults] injected: {fault}", flush=True)

    def postprocess(self, p, processed, *args):
        _restore()
