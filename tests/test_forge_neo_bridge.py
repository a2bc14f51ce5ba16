"""The Forge Neo bridge (lib_layerdiffusion/hosts/forge_neo.py, with the shared comfy_patcher.py, webui.py and
apply_plan.py) against a small fake of Neo (tests/fake_forge_neo: the Neo files at 6e1e0d5 that those layers
touch, each faked call naming its Neo file and line), and the Forge script on top.

The fake's `modules` / `backend` / `modules_forge` packages have the same names as the other fakes', so every
test here runs inside `neo_forge()`: the host packages already imported are set aside, sys.path shows only this
fake, and on leaving everything is put back as it was. Other test files see no trace, whatever the order.

Everything runs with real tensors: the weight patches are merged by the fake's copy of Neo's
merge_lora_to_weight / LoRAAdapter.calculate_weight and compared numerically; sampling steps go through the
fake's copy of Neo's sampling_function into a tiny UNet (KModel.apply_model concatenating c_concat), whose inputs
the tests read back. Sampling runs under torch.inference_mode, as modules/processing.py:914 runs it.

Nothing here has run in a real Forge Neo: the fake proves that the bridge uses Neo's API the way Neo's files
define it, not that those files behave like the fake.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from safetensors.torch import save_file

from host_isolation import fake_host_process

ROOT = Path(__file__).resolve().parents[1]
FAKE_NEO = Path(__file__).parent / "fake_forge_neo"
BRIDGE = "lib_layerdiffusion.hosts.forge_neo"
# our modules that bind to the Forge they are imported in: imported afresh under the fake, set aside after
HOST_BOUND = (BRIDGE, "lib_layerdiffusion.hosts.forge_backend", "lib_layerdiffusion.hosts.forge_legacy",
              "lib_layerdiffusion.hosts.webui")

ATTN = "(SDXL) Only Generate Transparent Image (Attention Injection)"
FG2BLE = "(SDXL) From Foreground to Blending"
JOINT = "(SD1.5) Generate Everything Together (need batch size 3)"

Q = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"  # (8, 8)
K2 = "diffusion_model.middle_block.1.transformer_blocks.1.attn2.to_k.weight"  # (8, 16): context 16 wide
OUT = "diffusion_model.input_blocks.5.1.transformer_blocks.0.attn2.to_out.0.weight"  # (8, 8)
CONV_IN = "diffusion_model.input_blocks.0.0.weight"  # (8, 4, 3, 3)


@contextlib.contextmanager
def neo_forge():
    """This process as Forge Neo would have it: backend / modules / modules_forge from the Neo fake."""
    with fake_host_process(FAKE_NEO, HOST_BOUND) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The Neo fake in place for this module's tests; yields the hosts package and the bridge."""
    with neo_forge() as hosts:
        import modules.paths
        modules.paths.models_path = str(tmp_path_factory.mktemp("neo_models"))
        bridge = importlib.import_module(BRIDGE)
        yield SimpleNamespace(hosts=hosts, bridge=bridge)


@pytest.fixture()
def bridge(env):
    from backend import memory_management
    memory_management.current_loaded_models.clear()
    memory_management.VAE_ALWAYS_TILED = False
    yield env.bridge
    memory_management.current_loaded_models.clear()
    memory_management.VAE_ALWAYS_TILED = False


def sdxl(**kwargs):
    from backend.diffusion_engine.sdxl import StableDiffusionXL
    return StableDiffusionXL(**kwargs)


def sd15(**kwargs):
    from backend.diffusion_engine.sd15 import StableDiffusion
    return StableDiffusion(**kwargs)


def make_p(sd_model, batch_size=1, width=64, height=64):
    """modules/processing.py StableDiffusionProcessing: the fields the hooks and the sampler use."""
    comments = {}
    return SimpleNamespace(sd_model=sd_model, batch_size=batch_size, width=width, height=height,
                           seeds=[100 + i for i in range(batch_size)], prompts=["a cat"] * batch_size,
                           extra_generation_params={}, extra_result_images=[], latents_after_sampling=[],
                           pixels_after_sampling=[], sample=lambda *a, **k: "sampled", comments=comments,
                           comment=lambda text: comments.__setitem__(text, 1),
                           close=lambda: None)  # processing.py StableDiffusionProcessing.close


def prepare(p, x):
    """sd_samplers_kdiffusion.py:141: the sampler loads the installed UNet before its first step."""
    from backend.sampling.sampling_function import sampling_prepare
    with torch.inference_mode():
        sampling_prepare(p.sd_model.forge_objects.unet, x=x)


def step(p, x, sigma, cond_scale=7.0):
    """One call of sampling_function as modules/sd_samplers_cfg_denoiser.py:146 makes it (cond and uncond of
    the batch's prompts); returns the denoised batch."""
    from backend.sampling.sampling_function import sampling_function
    sd_model = p.sd_model
    batch = x.shape[0]
    prompts = (p.prompts * batch)[:batch]
    denoiser = SimpleNamespace(inner_model=SimpleNamespace(inner_model=sd_model), p=p)
    params = SimpleNamespace(x=x, sigma=torch.full((batch,), float(sigma)), image_cond=None,
                             text_cond=sd_model.get_learned_conditioning(prompts),
                             text_uncond=sd_model.get_learned_conditioning([""] * batch))
    with torch.inference_mode():
        denoised, _, _ = sampling_function(denoiser, params, cond_scale, [[(i, 1.0)] for i in range(batch)])
    return denoised


def weight(unet, key):
    from backend import utils
    return utils.get_attr(unet.model, key).detach().clone()


def received(p):
    """What the fake UNet was called with (after KModel.apply_model concatenated c_concat)."""
    return p.sd_model.forge_objects.unet.model.diffusion_model.received


def safetensors_roundtrip(state):
    """A state dict as the model store hands it over: written and read back as safetensors."""
    return load_safetensors(save_safetensors(state))


def loaded(patcher):
    from backend import memory_management
    return any(entry.model is patcher for entry in memory_management.current_loaded_models)


# --- choosing the bridge --------------------------------------------------------------------------------------

def test_bridge_selection_picks_forge_neo(env, monkeypatch):
    """Neo has backend.patcher.unet like Forge main; only modules_forge/forge_version.py's "neo" tells them
    apart, so forge_neo must be tried first."""
    import modules_forge.forge_version
    assert modules_forge.forge_version.version == "neo"
    assert env.hosts.bridge_name() == "forge_neo"
    assert env.hosts.load_bridge() is env.bridge and env.bridge.NAME == "Forge Neo"
    assert importlib.util.find_spec("backend.patcher.unet") is not None
    monkeypatch.setattr(modules_forge.forge_version, "version", "f2.0.1v1.10.1")
    assert env.hosts.bridge_name() == "forge_backend"


def test_the_bridge_implements_the_host_protocol(bridge):
    from lib_layerdiffusion.hosts.protocol import PROTOCOL_NAMES, Host
    for name in PROTOCOL_NAMES:
        function = getattr(bridge, name, None)
        assert callable(function), f"forge_neo lacks {name}"
        expected = [p for p in inspect.signature(Host.__dict__[name]).parameters if p != "self"]
        assert list(inspect.signature(function).parameters) == expected, name


# --- weight patches -------------------------------------------------------------------------------------------

def test_sdxl_attention_lora_merges_to_w_plus_strength_up_down(bridge):
    from modules_forge.packages.comfy.weight_adapter import LoRAAdapter

    from lib_layerdiffusion.networks.unet_patch_file import parse_patch_file
    p = make_p(sdxl())
    shared = p.sd_model.forge_objects.unet
    gen = torch.Generator().manual_seed(3)
    shapes = {Q: (8, 8), K2: (8, 16), OUT: (8, 8)}
    state = {}
    for key, (rows, cols) in shapes.items():
        state[f"{key}::lora::0"] = torch.randn(rows, 2, generator=gen)  # up
        state[f"{key}::lora::1"] = torch.randn(2, cols, generator=gen)  # down
    state["diffusion_model.not_a_layer.weight::lora::0"] = torch.zeros(8, 2)
    state["diffusion_model.not_a_layer.weight::lora::1"] = torch.zeros(2, 8)
    state = safetensors_roundtrip(state)
    patches = parse_patch_file("layer_xl_transparent_attn.safetensors", state)
    before = {key: weight(shared, key) for key in shapes}

    unet = bridge.clone_unet(p)
    matched = bridge.add_weight_patches(unet, "layer_xl_transparent_attn.safetensors", patches, 0.7)
    assert matched == 3  # of 4: the key Neo's UNet lacks is left out
    assert shared.patches == {} and sorted(unet.patches) == sorted(shapes)
    (strength, value, strength_model, offset, function), = unet.patches[Q]
    assert (strength, strength_model, offset, function) == (0.7, 1.0, None, None)
    assert isinstance(value, LoRAAdapter) and value.weights[2] is None  # no alpha: scale 1

    bridge.install_unet(p, unet)
    prepare(p, torch.zeros(1, 4, 8, 8))
    for key in shapes:
        up, down = state[f"{key}::lora::0"], state[f"{key}::lora::1"]
        torch.testing.assert_close(weight(unet, key), before[key] + 0.7 * up @ down)
    # the next generation loads the shared patcher: Neo restores the weights from the backup its clones share
    p.sd_model.forge_objects.unet = shared
    prepare(p, torch.zeros(1, 4, 8, 8))
    for key in shapes:
        torch.testing.assert_close(weight(shared, key), before[key], rtol=0, atol=0)


@pytest.mark.parametrize("kind, error, message", [
    ("lora", ValueError, 'of type "lora" is not recognized'),  # backend/patcher/lora.py:114
    ("diff", TypeError, "not subscriptable"),  # backend/patcher/lora.py:99: v[1] is None
])
def test_the_old_slot_form_crashes_neo_but_the_bridge_form_merges(bridge, kind, error, message):
    """Forge main's (kind, 16 slots) value — which Neo's own UnetPatcher.load_frozen_patcher still builds — fails
    when Neo loads the UNet; the bridge's form of the same file merges."""
    from lib_layerdiffusion.hosts import comfy_patcher
    from lib_layerdiffusion.networks.unet_patch_file import parse_patch_file
    if kind == "lora":
        state = {f"{Q}::lora::0": torch.full((8, 2), 0.5), f"{Q}::lora::1": torch.full((2, 8), 0.25)}
        key, delta = Q, torch.full((8, 8), 0.25)
    else:
        state = {f"{OUT}::diff::0": torch.full((8, 8), 0.125)}
        key, delta = OUT, torch.full((8, 8), 0.125)
    patches = parse_patch_file("f.safetensors", state)

    for build in ("slots", "load_frozen_patcher"):
        p = make_p(sdxl())
        unet = bridge.clone_unet(p)
        if build == "slots":
            assert len(unet.add_patches(comfy_patcher.patch_values(patches, comfy_patcher.slot_list))) == 1
        else:
            unet.load_frozen_patcher("f.safetensors", state, 1.0)  # backend/patcher/unet.py:124
        bridge.install_unet(p, unet)
        with pytest.raises(error, match=message):
            prepare(p, torch.zeros(1, 4, 8, 8))

    p = make_p(sdxl())
    original = weight(p.sd_model.forge_objects.unet, key)
    unet = bridge.clone_unet(p)
    assert bridge.add_weight_patches(unet, "f.safetensors", patches, 1.0) == 1
    bridge.install_unet(p, unet)
    prepare(p, torch.zeros(1, 4, 8, 8))
    torch.testing.assert_close(weight(unet, key), original + delta)


def test_conv_in_diff_with_more_input_channels_pads_and_merges(bridge):
    from lib_layerdiffusion.networks.unet_patch_file import parse_patch_file
    p = make_p(sdxl())
    shared = p.sd_model.forge_objects.unet
    w0 = weight(shared, CONV_IN)
    bias0 = weight(shared, CONV_IN.replace("weight", "bias"))
    assert w0.shape == (8, 4, 3, 3)
    diff = torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(5))
    patches = parse_patch_file("layer_xl_fg2ble.safetensors", safetensors_roundtrip({f"{CONV_IN}::diff::0": diff}))
    unet = bridge.clone_unet(p)
    assert bridge.add_weight_patches(unet, "layer_xl_fg2ble.safetensors", patches, 0.5) == 1
    (_, value, _, _, _), = unet.patches[CONV_IN]
    assert value[0] == "diff" and value[1][1] == {"pad_weight": True}
    bridge.install_unet(p, unet)
    prepare(p, torch.zeros(1, 4, 8, 8))
    merged = weight(unet, CONV_IN)
    assert merged.shape == (8, 8, 3, 3)  # grown to the concat channels (lora.py:100 pad_tensor_to_shape)
    torch.testing.assert_close(merged[:, :4], w0 + 0.5 * diff[:, :4])
    torch.testing.assert_close(merged[:, 4:], 0.5 * diff[:, 4:])
    torch.testing.assert_close(weight(unet, CONV_IN.replace("weight", "bias")), bias0)


# --- the concat condition and stop-at -------------------------------------------------------------------------

def test_neo_applies_extra_concat_condition_only_for_inpainting_checkpoints(bridge):
    """Why the bridge does not use UnetPatcher.extra_concat_condition (what Forge main reads) on Neo."""
    for is_inpaint, channels in ((False, 4), (True, 8)):
        p = make_p(sdxl(is_inpaint=is_inpaint, in_channels=channels))
        unet = bridge.clone_unet(p)
        unet.extra_concat_condition = torch.ones(1, 4, 8, 8)
        bridge.install_unet(p, unet)
        step(p, torch.zeros(1, 4, 8, 8), 5.0)
        assert received(p)[-1].shape[1] == channels


def fg2ble_unet(bridge, p, images, ending_step=None, seed=11):
    """What apply_plan does for a concat method: clones, the conv_in diff, the concat latent, stop-at."""
    from lib_layerdiffusion.networks.unet_patch_file import parse_patch_file
    unpatched, unet = bridge.clone_unet(p), bridge.clone_unet(p)
    diff = torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(seed)) * 0.1
    bridge.add_weight_patches(unet, "layer_xl_fg2ble.safetensors",
                              parse_patch_file("f", {f"{CONV_IN}::diff::0": diff}), 1.0)
    with torch.inference_mode():
        torch.manual_seed(seed)
        latent = bridge.encode_images(p, images)
    bridge.set_concat_condition(unet, latent, p.batch_size)
    if ending_step is not None:
        bridge.add_stop_at(unet, unpatched, ending_step)
    bridge.install_unet(p, unet)
    return unet, unpatched, latent


def test_concat_condition_reaches_the_unet_of_a_non_inpaint_model(bridge):
    p = make_p(sdxl(is_inpaint=False), batch_size=2, width=64, height=48)
    red = np.zeros((48, 64, 3), np.float32)
    red[..., 0] = 1.0
    unet, _, latent = fg2ble_unet(bridge, p, [red])

    # the latent is Neo's VAE encode (a posterior sample) scaled by process_in, at the generation size
    vae = p.sd_model.forge_objects.vae
    inner = vae.first_stage_model
    with torch.inference_mode():
        moments = inner.quant_conv(inner.encoder(torch.from_numpy(red).permute(2, 0, 1)[None] * 2 - 1))
        mean, logvar = moments.chunk(2, dim=1)
        torch.manual_seed(11)
        sample = mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * torch.randn(mean.shape)
    assert latent.shape == (1, 4, 6, 8)
    torch.testing.assert_close(latent, inner.process_in(sample))
    assert unet.extra_concat_condition is None  # carried by the conditioning modifier instead

    x = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    prepare(p, x)
    step(p, x, 5.0)
    got = received(p)[-1]
    assert got.shape == (4, 8, 6, 8)  # cond and uncond rows of the batch of 2, 4 + 4 channels
    torch.testing.assert_close(got[:, 4:], latent.expand(4, -1, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(got[:, :4], torch.cat([x, x]) / (5.0 ** 2 + 1) ** 0.5)  # calculate_input


def test_stop_at_drops_the_concat_and_loads_the_unpatched_weights(bridge, monkeypatch):
    forge_backend = sys.modules["lib_layerdiffusion.hosts.forge_backend"]
    loads = []
    real_prepare = forge_backend.sampling_prepare
    monkeypatch.setattr(forge_backend, "sampling_prepare", lambda unet, x: (loads.append(unet), real_prepare(unet, x)))
    p = make_p(sdxl())
    shared = p.sd_model.forge_objects.unet
    w0 = weight(shared, CONV_IN)
    grey = np.full((64, 64, 3), 0.5, np.float32)
    unet, unpatched, _ = fg2ble_unet(bridge, p, [grey], ending_step=0.5)
    sigma_end = unet.model.predictor.percent_to_sigma(0.5)
    assert 0 < sigma_end < 14.6
    x = torch.zeros(1, 4, 8, 8)
    prepare(p, x)

    step(p, x, sigma_end * 2)
    assert received(p)[-1].shape[1] == 8 and weight(unet, CONV_IN).shape == (8, 8, 3, 3) and loaded(unet)
    step(p, x, sigma_end / 2)
    assert received(p)[-1].shape[1] == 4  # no c_concat any more
    torch.testing.assert_close(weight(unet, CONV_IN), w0, rtol=0, atol=0)  # the unpatched weights
    assert loads == [unpatched] and loaded(unpatched) and not loaded(unet)
    step(p, x, sigma_end / 4)
    assert loads == [unpatched]  # loaded once
    assert unpatched.patches == {} and "conditioning_modifiers" not in unpatched.model_options


# --- SD1.5: attention units around each model call ------------------------------------------------------------

def sd15_units(bridge, p, config="sd15_transparent_attn"):
    from lib_layerdiffusion.networks.attention_sharing import (
        SD15_ATTENTION_LAYER_NAMES,
        SD15_CONFIGS,
        AttentionSharingModel,
    )
    originals = bridge.attention_modules(bridge.clone_unet(p), SD15_ATTENTION_LAYER_NAMES)
    torch.manual_seed(0)
    model = AttentionSharingModel(originals, SD15_CONFIGS[config])
    return dict(zip(SD15_ATTENTION_LAYER_NAMES, originals)), model


def test_neo_object_patches_cannot_carry_modules(bridge):
    """Why the bridge does not use object patches on Neo: backend/patcher/base.py:671 sets them with
    utils.set_attr, which wraps the value in a Parameter (backend/utils.py:108)."""
    from lib_layerdiffusion.hosts import comfy_patcher
    p = make_p(sd15())
    originals, model = sd15_units(bridge, p)
    unet = bridge.clone_unet(p)
    comfy_patcher.replace_modules_by_object_patches(unet, dict(zip(originals, model.units)))
    bridge.install_unet(p, unet)
    with pytest.raises((TypeError, AttributeError)):
        prepare(p, torch.zeros(1, 4, 8, 8))


def test_sd15_units_are_in_the_unet_only_during_model_calls(bridge):
    from lib_layerdiffusion.networks.attention_sharing import AttentionSharingUnit
    p = make_p(sd15())
    shared = p.sd_model.forge_objects.unet
    diffusion_model = shared.model.diffusion_model
    originals, model = sd15_units(bridge, p)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    prepare(p, x)
    plain = step(p, x, 3.0)

    seen = []
    for name, unit in zip(originals, model.units):
        unit.register_forward_hook(
            lambda m, args, out, name=name: seen.append((name, diffusion_model.get_submodule(name) is m)))
    unet = bridge.clone_unet(p)
    bridge.replace_modules(unet, dict(zip(originals, model.units)), model)
    bridge.install_unet(p, unet)
    assert unet.object_patches == {} and shared.object_patches == {}
    assert "model_function_wrapper" in unet.model_options and "model_function_wrapper" not in shared.model_options
    (extra,) = unet.extra_model_patchers_during_sampling
    assert extra.model is model and shared.extra_model_patchers_during_sampling == []

    prepare(p, x)
    assert loaded(extra)  # the units' owner is loaded with the UNet by Neo's memory management
    assert all(diffusion_model.get_submodule(n) is m for n, m in originals.items())  # not in place yet
    patched = step(p, x, 3.0)
    assert sorted(name for name, _ in seen) == sorted(originals)  # each unit once (cond+uncond in one call)
    assert all(in_place for _, in_place in seen)  # ... while it sat in the UNet
    assert all(diffusion_model.get_submodule(n) is m for n, m in originals.items())  # and gone after
    assert not torch.allclose(patched, plain)
    assert all(isinstance(u, AttentionSharingUnit) for u in model.units)

    # the originals come back even when the model call fails
    def broken(*args, **kwargs):
        raise RuntimeError("unit failed")

    model.units[5].forward = broken
    with pytest.raises(RuntimeError, match="unit failed"):
        step(p, x, 3.0)
    assert all(diffusion_model.get_submodule(n) is m for n, m in originals.items())


def test_sd15_units_keep_an_earlier_model_function_wrapper(bridge):
    p = make_p(sd15())
    originals, model = sd15_units(bridge, p)
    unet = bridge.clone_unet(p)
    calls = []

    def earlier(apply_model, args):  # another extension's wrapper, set before LayerDiffuse's
        calls.append(p.sd_model.forge_objects.unet.model.diffusion_model.get_submodule(next(iter(originals))))
        return apply_model(args["input"], args["timestep"], **args["c"])

    unet.set_model_unet_function_wrapper(earlier)
    bridge.replace_modules(unet, dict(zip(originals, model.units)), model)
    bridge.install_unet(p, unet)
    x = torch.zeros(1, 4, 8, 8)
    prepare(p, x)
    step(p, x, 3.0)
    assert calls == [model.units[0]]  # called inside ours, with the units in place


def test_sd15_stop_at_also_stops_the_attention_units(bridge):
    p = make_p(sd15())
    originals, model = sd15_units(bridge, p)
    calls = []
    for unit in model.units:
        unit.register_forward_hook(lambda m, args, out: calls.append(m))
    unpatched, unet = bridge.clone_unet(p), bridge.clone_unet(p)
    bridge.replace_modules(unet, dict(zip(originals, model.units)), model)
    bridge.add_stop_at(unet, unpatched, 0.5)
    bridge.install_unet(p, unet)
    sigma_end = unet.model.predictor.percent_to_sigma(0.5)
    x = torch.zeros(1, 4, 8, 8)
    prepare(p, x)
    step(p, x, sigma_end * 2)
    assert len(calls) == 32
    calls.clear()
    step(p, x, sigma_end / 2)
    assert calls == []


# --- the VAE: img2img regulation and recorded decodes ---------------------------------------------------------

def expected_regulated(vae, pixels, offsets):
    """mean + std · offset from the fake encoder's moments (backend/nn/vae.py:304 encoder → quant_conv)."""
    inner = vae.first_stage_model
    with torch.inference_mode():
        moments = inner.quant_conv(inner.encoder(pixels.movedim(-1, 1) * 2.0 - 1.0))
    mean, logvar = moments.chunk(2, dim=1)
    return mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * offsets


def test_vae_regulation_makes_the_encode_mean_plus_std_offset(bridge):
    from lib_layerdiffusion.images.img2img import regulation_with_offsets
    p = make_p(sdxl(), batch_size=2)
    shared = p.sd_model.forge_objects.vae
    offsets = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    calls = []
    assert bridge.set_vae_regulation(p, regulation_with_offsets(offsets, calls)) is True
    vae = p.sd_model.forge_objects.vae
    assert vae is not shared and shared.first_stage_model is not vae.first_stage_model
    assert type(shared.first_stage_model).__name__ == "IntegratedAutoencoderKL"  # the shared VAE untouched
    pixels = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    expected = expected_regulated(shared, pixels, offsets)
    with torch.inference_mode():
        latent = vae.encode(pixels)  # backend/patcher/vae.py:251, one batch
        plain_a, plain_b = shared.encode(pixels), shared.encode(pixels)
    torch.testing.assert_close(latent, expected, rtol=0, atol=0)
    assert calls == [2]
    assert not torch.equal(plain_a, plain_b)  # Neo's own encode samples the posterior

    # the img2img path: encode_first_stage (backend/diffusion_engine/sdxl.py:109) scales it with process_in
    with torch.inference_mode():
        scaled = p.sd_model.encode_first_stage(pixels.movedim(-1, 1) * 2.0 - 1.0)
    torch.testing.assert_close(scaled, expected * 0.13025, rtol=1e-6, atol=1e-6)
    assert calls == [2, 2]
    assert bridge.latent_channels(p.sd_model) == 4


def test_tiled_encode_either_applies_the_offsets_right_or_not_at_all(bridge):
    from backend import memory_management

    from lib_layerdiffusion.images.img2img import regulation_with_offsets
    p = make_p(sdxl(), width=320, height=64)
    shared = p.sd_model.forge_objects.vae
    offsets = torch.randn(1, 4, 8, 40, generator=torch.Generator().manual_seed(0))
    calls = []
    bridge.set_vae_regulation(p, regulation_with_offsets(offsets, calls))
    pixels = torch.rand(1, 64, 320, 3, generator=torch.Generator().manual_seed(1))
    memory_management.VAE_ALWAYS_TILED = True
    with torch.inference_mode():
        latent = p.sd_model.forge_objects.vae.encode(pixels)
    # the fake encoder is local (8×8 patches), so tiling alone changes nothing (checked below for the mean)
    right = torch.allclose(latent, expected_regulated(shared, pixels, offsets), atol=1e-5)
    # here two of Neo's three tilings cover the whole 320x64 image, the third splits it: the offset is declined
    # there, which the 0 in the calls reports to the user (generation.check_init_offsets_applied)
    assert right or 0 in calls


def test_tiling_alone_does_not_change_the_fake_encoders_moments(bridge):
    """The control for the test above: with the identity regulation (the posterior's mean) a tiled encode of
    the copy gives exactly the whole image's mean."""
    from backend import memory_management
    p = make_p(sdxl(), width=320, height=64)
    shared = p.sd_model.forge_objects.vae
    bridge.set_vae_regulation(p, lambda posterior: posterior.mean)
    pixels = torch.rand(1, 64, 320, 3, generator=torch.Generator().manual_seed(1))
    memory_management.VAE_ALWAYS_TILED = True
    with torch.inference_mode():
        latent = p.sd_model.forge_objects.vae.encode(pixels)
    torch.testing.assert_close(latent, expected_regulated(shared, pixels, torch.zeros(1, 4, 8, 40)),
                               atol=1e-5, rtol=1e-5)


def test_record_vae_decodes_records_the_raw_latent_the_vae_decodes(bridge):
    p = make_p(sdxl(), batch_size=2)
    shared = p.sd_model.forge_objects.vae
    sink = []
    assert bridge.record_vae_decodes(p, sink) is True
    assert p.sd_model.forge_objects.vae is not shared and "decode" not in vars(shared)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        pixels = p.sd_model.decode_first_stage(x)  # backend/diffusion_engine/sdxl.py:115: process_out, decode
        plain = shared.decode(x / 0.13025)
    (raw,) = sink
    torch.testing.assert_close(raw, x / 0.13025)
    assert pixels.shape == (2, 3, 64, 64)
    torch.testing.assert_close((pixels + 1) / 2, plain.movedim(-1, 1))


def test_record_vae_decodes_keeps_the_autoencoders_output_before_neos_clip(bridge, monkeypatch):
    """The decoder's pixel input for FLUX.1 is the VAE's output unclipped (the Flux port's `decode(z) * 0.5 + 0.5`):
    recorded from the autoencoder on the copy, while the host's own decode still returns its clipped image
    (backend/patcher/vae.py:202 process_output clamps). A tiled decode records tiles: then the clipped image."""
    from backend import memory_management
    from lib_layerdiffusion.hosts.apply_plan import RecordedDecodes
    p = make_p(sdxl())
    shared = p.sd_model.forge_objects.vae
    model_type = type(shared.first_stage_model)
    plain_decode = model_type.decode
    monkeypatch.setattr(model_type, "decode", lambda self, z: plain_decode(self, z) * 5.0)  # past [-1, 1]
    sink = RecordedDecodes()
    bridge.record_vae_decodes(p, sink)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        image = p.sd_model.forge_objects.vae.decode(x)
        expected = (shared.first_stage_model.decode(x) + 1.0) / 2.0
    (pixels,) = sink.pixels
    assert pixels.min() < 0.0 and pixels.max() > 1.0
    torch.testing.assert_close(pixels, expected)
    torch.testing.assert_close(image, expected.clamp(0, 1).movedim(1, -1))  # the host's result as before
    memory_management.VAE_ALWAYS_TILED = True
    with torch.inference_mode():
        tiled = p.sd_model.forge_objects.vae.decode(x)
    assert 0.0 <= sink.pixels[1].min() and sink.pixels[1].max() <= 1.0
    torch.testing.assert_close(sink.pixels[1], tiled.movedim(-1, 1))


def test_tiled_decode_works_on_the_copy_where_neo_clone_lacks_upscale_ratio(bridge):
    from backend import memory_management
    p = make_p(sdxl())
    shared = p.sd_model.forge_objects.vae
    x = torch.randn(1, 4, 8, 80, generator=torch.Generator().manual_seed(4))  # wider than a 64-latent tile
    with torch.inference_mode():
        whole = shared.decode(x)
    memory_management.VAE_ALWAYS_TILED = True
    with pytest.raises(AttributeError, match="upscale_ratio"), torch.inference_mode():
        shared.clone().decode(x)  # backend/patcher/vae.py:167 clone() → decode_tiled_ reads upscale_ratio
    sink = []
    bridge.record_vae_decodes(p, sink)
    with torch.inference_mode():
        tiled = p.sd_model.forge_objects.vae.decode(x)
    assert tiled.shape == whole.shape == (1, 64, 640, 3)
    torch.testing.assert_close(sink[0], x)
    assert (tiled - whole).abs().mean() < 0.05  # tiles blended, as Neo's own tiled decode does


# --- the rest of the interface on Neo -------------------------------------------------------------------------

def test_webui_layer_on_neo(bridge, tmp_path):
    from modules import paths, script_callbacks
    from modules.scripts import PostprocessImageArgs
    from modules.shared import opts

    from lib_layerdiffusion.request.methods import BaseModel
    from lib_layerdiffusion.request.settings import OPTIONS, SECTION
    assert bridge.infotext_takes_callables() and bridge.has_init_images_hook()
    assert bridge.stealth_infotext_mode() == "None"  # Neo has no modules/stealth_infotext.py
    assert bridge.output_format() == "png" and bridge.vae_encode_is_full()
    assert bridge.default_models_folder() == str(Path(paths.models_path) / "layer_model")
    assert bridge.base_model(sdxl()) is BaseModel.SDXL and bridge.base_model(sd15()) is BaseModel.SD15
    assert bridge.compute_device_and_dtype("fp16") == (torch.device("cpu"), torch.float32)
    p = make_p(sdxl(), batch_size=2)
    assert bridge.image_index(p, PostprocessImageArgs(None, 3), "postprocess_image") == 3
    cond = bridge.text_condition(p, "glass, a cat")  # the crossattn of Neo's SDXL dict
    assert cond.shape == (1, 77, 16) and cond[0, 0, 0].item() == len("glass, a cat")
    unet = bridge.clone_unet(p)
    assert bridge.unet_device_and_dtype(unet) == (torch.device("cpu"), torch.float32)
    bridge.set_transformer_option(unet, "cond_overwrite", [None])
    assert unet.model_options["transformer_options"]["cond_overwrite"] == [None]
    assert "cond_overwrite" not in p.sd_model.forge_objects.unet.model_options["transformer_options"]

    arr = np.zeros((32, 48, 4), np.uint8)
    arr[8:24, 8:20] = (255, 0, 0, 255)
    resized = bridge.resize_image(1, Image.fromarray(arr, "RGBA"), 64, 64)
    assert resized.mode == "RGBA" and resized.size == (64, 64) and resized.getchannel("A").getextrema() == (0, 255)

    bridge.register_settings(OPTIONS, SECTION)
    for callback in script_callbacks.callbacks["ui_settings"]:
        callback()
    assert all(opts.data_labels[o.key].section == SECTION for o in OPTIONS)
    seen = []
    bridge.on_image_saved(lambda image, p, filename, infotext: seen.append(filename))
    p.outpath_samples, p.save_samples = str(tmp_path), lambda: True
    bridge.save_extra_image(p, Image.new("RGB", (8, 8)), 1, "-preview")
    assert seen and seen[0].endswith("-101-preview.png") and Path(seen[0]).exists()


def test_failures_stop_the_generation_with_the_error(bridge):
    from lib_layerdiffusion.errors import LayerDiffuseError
    p = make_p(sdxl())
    error = LayerDiffuseError("[LayerDiffuse] nope")
    shared = p.sd_model.forge_objects.unet
    bridge.fail_sampling(p, error)
    assert p.sd_model.forge_objects.unet is not shared
    with pytest.raises(LayerDiffuseError, match="nope"):
        step(p, torch.zeros(1, 4, 8, 8), 1.0)


# --- the Forge script on the Neo bridge -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def script(env):
    """scripts/layerdiffuse.py loaded in the Neo fake, with model files shaped for the fake UNets."""
    from modules import paths
    from seeded_weights import seeded_state_dict

    from lib_layerdiffusion.networks.attention_sharing import (
        SD15_CONFIGS,
        AttentionSharingModel,
    )
    layer = Path(paths.models_path) / "layer_model"
    layer.mkdir(exist_ok=True)
    for name in ("vae_transparent_decoder", "vae_transparent_encoder"):
        save_file(seeded_state_dict(name.removeprefix("vae_")), str(layer / f"{name}.safetensors"))
    save_file(seeded_state_dict("transparent_decoder"), str(layer / "layer_sd15_vae_transparent_decoder.safetensors"))
    gen = torch.Generator().manual_seed(7)
    save_file({f"{Q}::lora::0": torch.randn(8, 4, generator=gen) * 0.1,
               f"{Q}::lora::1": torch.randn(4, 8, generator=gen) * 0.1},
              str(layer / "layer_xl_transparent_attn.safetensors"))
    save_file({f"{CONV_IN}::diff::0": torch.randn(8, 8, 3, 3, generator=gen) * 0.1},
              str(layer / "layer_xl_fg2ble.safetensors"))
    from backend.diffusion_engine.sd15 import StableDiffusion

    from lib_layerdiffusion.networks.attention_sharing import (
        SD15_ATTENTION_LAYER_NAMES,
        sd15_attention_modules,
    )
    originals = sd15_attention_modules(StableDiffusion().forge_objects.unet.model.diffusion_model,
                                       SD15_ATTENTION_LAYER_NAMES)
    with torch.device("meta"):
        shapes = AttentionSharingModel(originals, SD15_CONFIGS["sd15_joint"]).expected_shapes()
    save_file({k: torch.randn(s, generator=gen) * 0.01 for k, s in shapes.items()},
              str(layer / "layer_sd15_joint.safetensors"))
    for stem in ("sd15_transparent_attn", "sd15_fg2bg", "sd15_bg2fg"):
        with torch.device("meta"):
            shapes = AttentionSharingModel(originals, SD15_CONFIGS[stem]).expected_shapes()
        save_file({k: torch.randn(s, generator=gen) * 0.01 for k, s in shapes.items()},
                  str(layer / f"layer_{stem}.safetensors"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        spec = importlib.util.spec_from_file_location("layerdiffuse_neo_script", ROOT / "scripts" / "layerdiffuse.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.bridge is env.bridge
        yield module.LayerDiffuseScript()


def script_args(method=ATTN, weight=1.0, ending_step=1.0, fg=None, prompts=("", "", "")):
    return (True, method, weight, ending_step, fg, None, None, "Crop and Resize", False, *prompts)


def neo_txt2img(script, p, args, sigmas=(14.6, 4.0, 1.0, 0.1), inspect_step=None):
    """modules/processing.py process_images for one batch of txt2img: process (processing.py:910), then under
    torch.inference_mode (:914) forge_objects rebuilt and process_before_every_sampling (:1395-1399); the
    sampler loads the UNet and calls sampling_function per step (an Euler sampler here); decode_first_stage per
    image; then per image postprocess_image and postprocess_image_after_composite. Returns the final images."""
    from backend.sampling.sampling_function import sampling_cleanup
    from modules.scripts import PostprocessImageArgs, PostSampleArgs
    script.process(p, *args)
    with torch.inference_mode():
        sd_model = p.sd_model
        sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()
        x = torch.randn(p.batch_size, 4, p.height // 8, p.width // 8, generator=torch.Generator().manual_seed(0))
        script.process_before_every_sampling(p, *args, x=x, noise=x, c=None, uc=None)
        assert p.sample() == "sampled"
        prepare(p, x)
        x = x * sigmas[0]
        for i, sigma in enumerate(sigmas):
            denoised = step(p, x, sigma)
            if inspect_step is not None:
                inspect_step(i, sigma)
            following = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
            x = x + (x - denoised) / sigma * (following - sigma)
        sampling_cleanup(sd_model.forge_objects.unet)
        results = []
        ps = PostSampleArgs(x)  # processing.py:1000-1002: post_sample may hand back already decoded samples
        script.post_sample(p, ps, *args)
        if getattr(ps.samples, "already_decoded", False):  # processing.py:1004
            batch = torch.stack(list(ps.samples))
        else:
            # processing.py:1011 decode_latent_batch (samples_to_images_tensor with 'VAE for Decoding'): the whole
            # batch is decoded before any image's postprocess hooks
            from modules import sd_samplers_common
            from modules.shared import opts
            batch = sd_samplers_common.samples_to_images_tensor(
                ps.samples, 3 if opts.sd_vae_decode_method == "TAESD" else 0, sd_model)
        for i in range(p.batch_size):
            decoded = batch[i]
            image = Image.fromarray((((decoded + 1) / 2).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy())
            pp = PostprocessImageArgs(image, i)
            script.postprocess_image(p, pp, *args)
            p.pixels_after_sampling.append(pp.image)
            pp = PostprocessImageArgs(pp.image, i)
            script.postprocess_image_after_composite(p, pp, *args)
            results.append(pp.image)
    return results


def test_script_sdxl_attention_injection_gives_rgba_on_neo(script, bridge):
    p = make_p(sdxl(), batch_size=2)
    shared = p.sd_model.forge_objects_after_applying_lora.unet
    w0 = weight(shared, Q)
    state = load_safetensors(Path(sys.modules["modules.paths"].models_path, "layer_model",
                                  "layer_xl_transparent_attn.safetensors").read_bytes())
    merged = []
    results = neo_txt2img(script, p, script_args(weight=0.8),
                          inspect_step=lambda i, s: merged.append(weight(p.sd_model.forge_objects.unet, Q)))
    assert p.comments == {} and p.extra_generation_params["layerdiffusion_method"] == ATTN
    unet = p.sd_model.forge_objects.unet
    assert unet is not shared and shared.patches == {}
    expected = w0 + 0.8 * state[f"{Q}::lora::0"] @ state[f"{Q}::lora::1"]
    for w in merged:  # every step sampled with the merged weight
        torch.testing.assert_close(w, expected)
    assert all(image.mode == "RGBA" and image.size == (64, 64) for image in results)
    alpha = np.asarray(results[0].getchannel("A"))
    assert alpha.std() > 0  # a decoded alpha, not a constant
    assert len(p.extra_result_images) == 2 and all(im.mode == "RGB" for im in p.extra_result_images)
    assert sum(len(batch) for batch in p.layerdiffuse_decoded_latents) == 2  # each image's raw latent, as the VAE received it


def test_script_sdxl_fg2ble_concat_and_stop_at_on_neo(script, bridge):
    p = make_p(sdxl(), batch_size=2)
    fg = Image.new("RGBA", (40, 30), (255, 0, 0, 255))
    w0 = weight(p.sd_model.forge_objects.unet, CONV_IN)
    channels = []
    results = neo_txt2img(script, p, script_args(FG2BLE, fg=fg, ending_step=0.5),
                          inspect_step=lambda i, s: channels.append(
                              (received(p)[-1].shape[1], weight(p.sd_model.forge_objects.unet, CONV_IN).shape[1])))
    assert p.comments == {}
    sigma_end = p.sd_model.forge_objects.unet.model.predictor.percent_to_sigma(0.5)
    sigmas = (14.6, 4.0, 1.0, 0.1)
    assert channels == [(8, 8) if s >= sigma_end else (4, 4) for s in sigmas]
    assert (8, 8) in channels and (4, 4) in channels
    torch.testing.assert_close(weight(p.sd_model.forge_objects.unet, CONV_IN), w0, rtol=0, atol=0)
    assert [image.mode for image in results] == ["RGB", "RGB"]  # blending: nothing transparent


def test_script_sd15_joint_on_neo(script, bridge):
    from lib_layerdiffusion.networks.attention_sharing import SD15_ATTENTION_LAYER_NAMES
    p = make_p(sd15(), batch_size=3)
    diffusion_model = p.sd_model.forge_objects.unet.model.diffusion_model
    originals = [diffusion_model.get_submodule(n) for n in SD15_ATTENTION_LAYER_NAMES]
    results = neo_txt2img(script, p, script_args(JOINT, prompts=("glass", "", "on a table")), sigmas=(14.6, 1.0))
    unet = p.sd_model.forge_objects.unet
    assert p.comments == {} and unet.object_patches == {}
    fg, bg, blend = unet.model_options["transformer_options"]["cond_overwrite"]
    assert fg[0, 0, 0].item() == len("glass, a cat") and bg is None
    assert blend[0, 0, 0].item() == len("on a table, a cat")
    assert [diffusion_model.get_submodule(n) for n in SD15_ATTENTION_LAYER_NAMES] == originals
    assert [image.mode for image in results] == ["RGBA", "RGB", "RGB"]
    # the units built for this generation are swapped in for the next model call
    _, model = p.layerdiffuse_attention_units
    seen = []
    model.units[0].register_forward_hook(
        lambda m, args, out: seen.append(diffusion_model.get_submodule(SD15_ATTENTION_LAYER_NAMES[0]).unit is m))
    step(p, torch.zeros(3, 4, 8, 8), 1.0)
    assert seen == [True]


# --- never a silently wrong alpha ------------------------------------------------------------------------------

def test_script_with_taesd_decoding_reads_the_full_vaes_latent_on_neo(script, bridge, monkeypatch):
    from modules.shared import opts

    from lib_layerdiffusion.networks.transparent_vae import TransparentDecoder
    seen = []
    decode = TransparentDecoder.decode
    monkeypatch.setattr(TransparentDecoder, "decode", lambda self, pixel, latent, passes=8:
                        seen.append(latent) or decode(self, pixel, latent, passes))
    monkeypatch.setitem(opts.data, "sd_vae_decode_method", "TAESD")
    p = make_p(sdxl(), batch_size=2)
    results = neo_txt2img(script, p, script_args())
    assert [image.mode for image in results] == ["RGBA", "RGBA"]
    recorded = torch.cat(p.layerdiffuse_decoded_latents)
    assert recorded.shape == (2, 4, 8, 8) and len(seen) == 2
    for i, latent in enumerate(seen):
        torch.testing.assert_close(latent[0], recorded[i])
    assert any("VAE type for decode" in text for text in p.comments)


def test_script_foreign_error_in_a_hook_stops_the_generation_on_neo(script, bridge, monkeypatch):
    from lib_layerdiffusion import generation
    from lib_layerdiffusion.errors import HookError

    def broken(*a, **k):
        raise TypeError("add_extra_torch_module_during_sampling() got an unexpected keyword argument")

    monkeypatch.setattr(generation, "apply_plan", broken)
    p = make_p(sdxl())
    with pytest.raises(HookError, match="Patching the model failed.*TypeError"):
        neo_txt2img(script, p, script_args())


def neo_img2img_p(init_images):
    p = make_p(sdxl())
    p.init_images, p.resize_mode, p.mask_for_overlay, p.paste_to = list(init_images), 0, None, None
    return p


def transparent_square():
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((200, 40, 40, 255), (16, 16, 48, 48))
    return image


def test_script_img2img_regulation_never_outlives_its_request_on_neo(script, bridge):
    """Put back before sampling; and if the request was interrupted right after its init encode (Neo
    processing.py rebuilds forge_objects only at the next batch), the next request's process puts it back before
    that request's init images are encoded."""
    from lib_layerdiffusion.hosts.comfy_patcher import _RegulatedAutoencoder
    args = script_args()
    p = neo_img2img_p([transparent_square()])
    script.process(p, *args)
    script.before_process_init_images(p, {"crop_region": None, "image_mask": None}, *args)
    assert isinstance(p.sd_model.forge_objects.vae.first_stage_model, _RegulatedAutoencoder)
    with torch.inference_mode():
        p.sd_model.forge_objects.vae.encode(torch.rand(1, 64, 64, 3))
    noise = torch.zeros((1, 4, 8, 8))
    script.process_before_every_sampling(p, *args, x=noise, noise=noise)
    assert not isinstance(p.sd_model.forge_objects.vae.first_stage_model, _RegulatedAutoencoder)

    interrupted = neo_img2img_p([transparent_square()])
    script.process(interrupted, *args)
    script.before_process_init_images(interrupted, {"crop_region": None, "image_mask": None}, *args)
    following = neo_img2img_p([Image.new("RGB", (64, 64), (5, 6, 7))])
    following.sd_model = interrupted.sd_model
    script.process(following, False, *args[1:])  # LayerDiffuse off
    assert type(following.sd_model.forge_objects.vae.first_stage_model).__name__ == "IntegratedAutoencoderKL"


def test_script_img2img_encoder_failure_leaves_init_images_alone_on_neo(script, bridge, monkeypatch):
    from lib_layerdiffusion import generation
    from lib_layerdiffusion.errors import HookError
    from lib_layerdiffusion.hosts.comfy_patcher import _RegulatedAutoencoder
    monkeypatch.setattr(generation._built, "get", lambda *a, **k: (_ for _ in ()).throw(OSError("disk read error")))
    square = transparent_square()
    p = neo_img2img_p([square])
    script.process(p, *script_args())
    script.before_process_init_images(p, {"crop_region": None, "image_mask": None}, *script_args())
    assert p.init_images[0] is square
    assert not isinstance(p.sd_model.forge_objects.vae.first_stage_model, _RegulatedAutoencoder)
    with pytest.raises(HookError, match="Preparing the init images failed.*OSError.*disk read error"):
        p.sample()

SD15_METHODS = (  # method, its frames (the batch size), which control image it takes
    ("(SD1.5) Only Generate Transparent Image (Attention Injection)", 1, None),
    ("(SD1.5) From Foreground to Background (need batch size 2)", 2, "fg"),
    ("(SD1.5) From Background to Foreground (need batch size 2)", 2, "bg"),
    (JOINT, 3, None),
)


@pytest.mark.parametrize("method, frames, control", SD15_METHODS)
def test_script_sd15_units_keep_a_users_lora_and_leave_nothing_patched(script, bridge, method, frames, control):
    """A user's LoRA on attn1, attn2, ff and conv layers under every SD1.5 method: Neo merges it into the UNet's
    own weights when the UNet is loaded (memory_management.py LoadedModel.model_load → refresh_loras, with the
    originals in place), and the units swapped in for each model call compute with those weights, so the
    denoised step differs from <lora:x:0>; a plain step afterwards is the one before. (Neo kept the LoRA before
    the units were installed with the originals' children too: this guards it.)"""
    from modules_forge.packages.comfy.weight_adapter import LoRAAdapter
    from user_lora import lora_deltas, weights
    sd_model = sd15()
    shared = sd_model.forge_objects_original.unet
    diffusion_model = shared.model.diffusion_model
    before = weights(diffusion_model)
    x = torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(5))

    def plain_step():
        p = make_p(sd_model, batch_size=frames)
        sd_model.forge_objects = sd_model.forge_objects_original.shallow_copy()
        prepare(p, x)
        return step(p, x, 1.0)

    plain_before = plain_step()
    # extensions-builtin/sd_forge_lora/networks.py :69: the LoRA's weight adapters on a clone (a LoRA patcher)
    patches = {key: LoRAAdapter(set(), (up, down, None, None, None, None))
               for key, (up, down) in lora_deltas(diffusion_model).items()}
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    args = (True, method, 1.0, 1.0, image if control == "fg" else None, image if control == "bg" else None, None,
            "Crop and Resize", False, "", "", "")

    def step_with_lora(strength):
        lora = shared.clone()
        matched = lora.add_patches(filename="user_lora.safetensors", patches=patches, strength_patch=strength,
                                   online_mode=False)
        assert sorted(matched) == sorted(patches)
        sd_model.forge_objects_after_applying_lora.unet = lora
        p = make_p(sd_model, batch_size=frames)
        neo_txt2img(script, p, args, sigmas=(14.6, 1.0))
        assert p.comments == {}
        return step(p, x, 1.0)

    at_zero, at_one = step_with_lora(0.0), step_with_lora(1.0)
    assert not torch.allclose(at_one, at_zero)
    sd_model.forge_objects_after_applying_lora.unet = shared
    torch.testing.assert_close(plain_step(), plain_before, rtol=0, atol=0)
    after = weights(diffusion_model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
