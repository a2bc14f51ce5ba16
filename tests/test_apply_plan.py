"""hosts/apply_plan.py with a recording host: the order of the steps and what is refused or reported."""
from types import SimpleNamespace

import pytest
import torch

from lib_layerdiffusion.errors import ModelFileError
from lib_layerdiffusion.hosts.apply_plan import apply_plan
from lib_layerdiffusion.plan import plan_sampling
from lib_layerdiffusion.request.args import LayerDiffuseArgs


class RecordingHost:
    """Implements the calls apply_plan makes (hosts/protocol.py Host) by recording them."""
    NAME = "recording"

    def __init__(self, unmatched=None):
        self.calls, self.unmatched, self.told = [], unmatched or {}, []

    def clone_unet(self, p):
        self.calls.append("clone")
        return SimpleNamespace()

    def add_peft_lora(self, unet, filename, state_dict, strength):
        self.calls.append(("lora", filename, strength))
        return self.unmatched

    def add_stop_at(self, unet, unpatched, ending_step):
        self.calls.append(("stop_at", ending_step))

    def install_unet(self, p, unet):
        self.calls.append("install")

    def record_vae_decodes(self, p, sink):
        self.calls.append("record")
        return True

    def tell_user(self, p, message):
        self.told.append(message)


class Store:
    def __init__(self, keys):
        self.sd = {k: torch.zeros(1) for k in keys}

    def load(self, name):
        return self.sd


FLUX = "(FLUX.1) Only Generate Transparent Image"


def plan(ending_step=1.0):
    args = LayerDiffuseArgs.from_script_args({"enabled": True, "method": FLUX, "ending_step": ending_step})
    return plan_sampling(args, (1, 16, 8, 8), "x")


def test_flux_lora_then_stop_at_then_install_then_record():
    host = RecordingHost()
    decoded = apply_plan(SimpleNamespace(), plan(0.5), host, Store(["a.lora_A.weight"]), "FLUX.1")
    assert decoded == [] and host.told == []
    assert host.calls == ["clone", "clone", ("lora", "layerlora.safetensors", 1.0), ("stop_at", 0.5), "install",
                          "record"]


def test_some_keys_landing_nowhere_are_told_none_landing_stops_the_generation():
    keys = ["a.lora_A.weight", "a.lora_B.weight", "b.lora_A.weight", "b.lora_B.weight"]
    host = RecordingHost(unmatched={"b.lora_A.weight": "no parameter", "b.lora_B.weight": "no parameter"})
    apply_plan(SimpleNamespace(), plan(), host, Store(keys), "FLUX.1")
    assert len(host.told) == 1 and "2 of the 4 keys of layerlora.safetensors" in host.told[0]
    host = RecordingHost(unmatched={k: "no parameter" for k in keys})
    with pytest.raises(ModelFileError, match="would not come out transparent"):
        apply_plan(SimpleNamespace(), plan(), host, Store(keys), "FLUX.1")
    assert "install" not in host.calls  # nothing is left installed
