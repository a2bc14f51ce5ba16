"""The bridge to the `ldm_patched/` + `modules_forge/` generation (lib_layerdiffusion/hosts/forge_legacy.py) and the
Forge script on top of it, against tests/fake_forge_legacy: old Forge `previous` (bfee03d8) and reForge
(3b56b268), one fake tree with a switch (its README.md). A test that takes `env` runs once per host; one that is
about a single host says so with `@only("previous")` / `@only("reforge")`.

The fake's `modules` package has the same name as tests/fake_forge's, so every test here runs inside
`legacy_forge()`: the host packages already imported are set aside, sys.path shows only this fake, and on leaving
everything is put back as it was. Other test files see no trace, whatever the order.

Nothing here has run in a real old Forge or reForge: the fake proves that the bridge and the script use those
hosts' API the way their files at those commits define it, not that the files behave like the fake.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from host_isolation import fake_host_process

ROOT = Path(__file__).resolve().parents[1]
FAKE_LEGACY = Path(__file__).parent / "fake_forge_legacy"
BRIDGE = "lib_layerdiffusion.hosts.forge_legacy"
# our modules that bind to the Forge they are imported in: imported afresh under the fake, set aside after
HOST_BOUND = (BRIDGE, "lib_layerdiffusion.hosts.webui")
VARIANTS = ("previous", "reforge")

ATTN = "(SDXL) Only Generate Transparent Image (Attention Injection)"
FG2BLE = "(SDXL) From Foreground to Blending"
JOINT = "(SD1.5) Generate Everything Together (need batch size 3)"


def only(variant):
    """Run a test against one of the two hosts only."""
    return pytest.mark.parametrize("env", [variant], indirect=True)


@contextlib.contextmanager
def legacy_forge(variant: str):
    """This process as old Forge `previous` or reForge would have it: ldm_patched / modules_forge / modules from
    the legacy fake with its switch set to `variant`, no `backend`."""
    with fake_host_process(FAKE_LEGACY, HOST_BOUND) as hosts:
        import fake_host
        fake_host.VARIANT = variant
        yield hosts


@pytest.fixture(scope="module", params=VARIANTS)
def env(request, tmp_path_factory):
    """One host of the legacy fake in place for this module's tests; the hosts package and the bridge."""
    with legacy_forge(request.param) as hosts:
        import modules.paths
        modules.paths.models_path = str(tmp_path_factory.mktemp(f"legacy_models_{request.param}"))
        bridge = importlib.import_module(BRIDGE)
        yield SimpleNamespace(hosts=hosts, bridge=bridge, variant=request.param,
                              reforge=request.param == "reforge")


@pytest.fixture()
def bridge(env):
    from ldm_patched.modules import model_management
    from modules_forge import forge_sampler
    model_management.current_loaded_models.clear()
    forge_sampler.sampled.clear()
    return env.bridge


@pytest.fixture()
def opts(env):
    from modules.shared import opts
    saved = dict(opts.data)
    yield opts
    opts.data.clear()
    opts.data.update(saved)


def make_p(is_sdxl=True, batch_size=1, width=64, height=64, attention_names=(), init_images=None, **kwargs):
    """A txt2img (or, with init images, img2img) processing object on a freshly loaded tiny checkpoint
    (modules_forge/forge_loader.py), with the prompts and seeds of its first batch."""
    from modules import processing
    from modules_forge.forge_loader import load_model
    sd_model = load_model(is_sdxl, attention_names)
    if init_images is not None:
        p = processing.StableDiffusionProcessingImg2Img(sd_model, list(init_images), batch_size=batch_size,
                                                        width=width, height=height, **kwargs)
    else:
        p = processing.StableDiffusionProcessingTxt2Img(sd_model, batch_size=batch_size, width=width,
                                                        height=height, **kwargs)
    p.prompts, p.seeds, p.all_seeds = [p.prompt] * batch_size, list(range(batch_size)), list(range(batch_size))
    return p


def conds():
    return [{"model_conds": {}}]


def vae_moments(vae, pixels):
    """The encoder's moments (mean, log-variance) of B×H×W×3 pixels in [0, 1], through quant_conv, as
    AutoencoderKL.encode computes them before its regularizer."""
    model = vae.first_stage_model
    return model.quant_conv(model.encoder(2.0 * pixels.movedim(-1, 1) - 1.0))


# --- choosing the bridge --------------------------------------------------------------------------------------

def test_load_bridge_picks_the_legacy_bridge_when_only_ldm_patched_and_modules_forge_exist(env):
    from modules_forge import forge_version
    assert importlib.util.find_spec("backend") is None
    assert forge_version.version != "neo"  # both hosts have modules_forge/forge_version.py
    assert env.hosts.bridge_name() == "forge_legacy"
    assert env.hosts.load_bridge() is env.bridge
    assert env.bridge.NAME == "Forge (ldm_patched: old Forge / reForge)"


def test_load_bridge_keeps_the_current_generation_first(env, monkeypatch, tmp_path):
    (tmp_path / "backend" / "patcher").mkdir(parents=True)
    for name in ("backend/__init__.py", "backend/patcher/__init__.py", "backend/patcher/unet.py"):
        (tmp_path / name).write_text("")
    current = ModuleType("lib_layerdiffusion.hosts.forge_backend")
    monkeypatch.setitem(sys.modules, current.__name__, current)
    monkeypatch.setattr(env.hosts, "forge_backend", current, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert env.hosts.load_bridge() is current
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "backend"]:
            del sys.modules[name]


def test_load_bridge_without_any_forge_says_so(env, monkeypatch):
    from lib_layerdiffusion.errors import LayerDiffuseError
    for name in [n for n in sys.modules if n.split(".")[0] in ("ldm_patched", "modules_forge")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(FAKE_LEGACY)])
    with pytest.raises(LayerDiffuseError, match="No supported Forge"):
        env.hosts.load_bridge()


def test_the_bridge_implements_the_host_protocol(bridge):
    from lib_layerdiffusion.hosts.protocol import PROTOCOL_NAMES, Host
    assert isinstance(bridge.NAME, str)
    for name in PROTOCOL_NAMES:
        function = getattr(bridge, name, None)
        assert callable(function), f"forge_legacy lacks {name}"
        expected = [(p.name, p.default) for p in list(inspect.signature(getattr(Host, name)).parameters.values())[1:]]
        actual = [(p.name, p.default) for p in inspect.signature(function).parameters.values()]
        assert actual == expected, name
        assert function.__doc__, f"{name} names no host file"


def test_what_each_host_offers_is_what_the_bridge_reports(bridge, env):
    """The facts the bridge reads from the host, per host: reForge has the init-images hook, callables in the
    infotext, latent_channels, weight_adapter and a stealth infotext; `previous` has none of them."""
    p = make_p()
    assert (importlib.util.find_spec("modules.stealth_infotext") is not None) is env.reforge
    assert (importlib.util.find_spec("ldm_patched.modules.weight_adapter") is not None) is env.reforge
    assert bridge.has_init_images_hook() is env.reforge
    assert bridge.infotext_takes_callables() is env.reforge
    assert bridge.latent_channels(p.sd_model) == (4 if env.reforge else None)
    assert bridge.stealth_infotext_mode() == "None"  # reForge: stealth_pnginfo_opt defaults to "None"
    assert bridge._lora_adapter_class() is (
        importlib.import_module("ldm_patched.modules.weight_adapter").LoRAAdapter if env.reforge else None)


def test_image_index_counts_each_hook_per_batch(bridge):
    """PostprocessImageArgs carries no index in either host: each hook's calls are counted per iteration."""
    from modules.scripts import PostprocessImageArgs
    p = make_p(batch_size=3)
    image = Image.new("RGB", (8, 8))
    for iteration in (0, 1):
        p.iteration = iteration
        for position in range(3):
            pp = PostprocessImageArgs(image)
            assert not hasattr(pp, "index")
            assert bridge.image_index(p, pp, "postprocess_image") == 3 * iteration + position
            assert bridge.image_index(p, pp, "postprocess_image_after_composite") == 3 * iteration + position


# --- the UNet -------------------------------------------------------------------------------------------------

def patch_state(gen):
    """A patch file: a LoRA on the output layer, a diff growing the input conv to 8 channels, an unknown key."""
    return {
        "diffusion_model.out.weight::lora::0": torch.randn(8, 2, generator=gen),
        "diffusion_model.out.weight::lora::1": torch.randn(2, 8, generator=gen),
        "diffusion_model.input_blocks.0.0.weight::diff::0": torch.randn(8, 8, 3, 3, generator=gen),
        "diffusion_model.not_a_layer.weight::diff::0": torch.zeros(3),
    }


def test_weight_patches_merge_as_the_host_computes_them(bridge, env):
    """The LoRA and the padded diff go on a clone in the value forms each host merges (old Forge's (kind, 16
    slots) and ("diff", (t, {"pad_weight": True})), reForge's LoRAAdapter), and loading the clone gives the same
    merged weights on both: out + s·up@down, and the input conv grown to 8 channels plus s·diff."""
    from modules_forge.forge_sampler import sampling_prepare

    from lib_layerdiffusion.networks.unet_patch_file import parse_patch_file
    state = patch_state(torch.Generator().manual_seed(0))
    p = make_p()
    shared = p.sd_model.forge_objects.unet
    unet = bridge.clone_unet(p)
    patches = parse_patch_file("layer_xl_fg2ble.safetensors", state)
    assert bridge.add_weight_patches(unet, "layer_xl_fg2ble.safetensors", patches, 0.5) == 2
    assert shared.patches == {} and sorted(unet.patches) == ["diffusion_model.input_blocks.0.0.weight",
                                                             "diffusion_model.out.weight"]
    (lora,), (diff,) = unet.patches["diffusion_model.out.weight"], unet.patches["diffusion_model.input_blocks.0.0.weight"]
    assert (lora[0], lora[2]) == (diff[0], diff[2]) == (0.5, 1.0)
    if env.reforge:  # (strength, value, strength_model, offset, function)
        from ldm_patched.modules.weight_adapter import LoRAAdapter
        assert len(lora) == 5 and isinstance(lora[1], LoRAAdapter)
        assert lora[1].weights[0] is patches["diffusion_model.out.weight"].up and lora[1].weights[2:] == (None,) * 4
    else:  # (strength, value, strength_model)
        kind, slots = lora[1]
        assert len(lora) == 3 and kind == "lora" and len(slots) == 16 and slots[2] is None and slots[3] is None
    assert diff[1][0] == "diff" and diff[1][1][1] == {"pad_weight": True}

    model = unet.model.diffusion_model
    conv_before = model.get_submodule("input_blocks.0.0").weight.detach().clone()
    out_before = model.out.weight.detach().clone()
    sampling_prepare(unet, torch.zeros(1, 4, 8, 8))  # the host loads the installed patcher
    conv = model.get_submodule("input_blocks.0.0").weight
    d = state["diffusion_model.input_blocks.0.0.weight::diff::0"]
    assert conv.shape == (8, 8, 3, 3)
    torch.testing.assert_close(conv[:, :4], conv_before + 0.5 * d[:, :4])
    torch.testing.assert_close(conv[:, 4:], 0.5 * d[:, 4:])
    up, down = state["diffusion_model.out.weight::lora::0"], state["diffusion_model.out.weight::lora::1"]
    torch.testing.assert_close(model.out.weight, out_before + 0.5 * up @ down)

    sampling_prepare(bridge.clone_unet(p), torch.zeros(1, 4, 8, 8))  # the next plain sampling: originals back
    torch.testing.assert_close(model.get_submodule("input_blocks.0.0").weight, conv_before)
    torch.testing.assert_close(model.out.weight, out_before)


def test_the_value_forms_matter_to_each_hosts_weight_merge(env, caplog):
    """Why the bridge builds the values it builds: reForge's lora.calculate_weight skips a plain ("lora", ...)
    value with a log line and leaves a diff unmerged without {'pad_weight': True}; old Forge's
    ModelPatcher.calculate_weight grows the weight for a diff on its own and reads a LoRA from the slot list."""
    gen = torch.Generator().manual_seed(1)
    up, down, d = torch.randn(8, 2, generator=gen), torch.randn(2, 8, generator=gen), torch.randn(8, 8, 3, 3,
                                                                                                   generator=gen)
    weight, conv = torch.randn(8, 8, generator=gen), torch.randn(8, 4, 3, 3, generator=gen)
    slots = [up, down] + [None] * 14
    if env.reforge:
        from ldm_patched.modules import lora
        with caplog.at_level(logging.INFO):
            out = lora.calculate_weight([(1.0, ("lora", slots), 1.0, None, None)], weight.clone(), "out.weight")
            torch.testing.assert_close(out, weight)
            assert "patch type not recognized lora out.weight" in caplog.text
            grown = lora.calculate_weight([(1.0, ("diff", (d,)), 1.0, None, None)], conv.clone(), "conv.weight")
            assert grown.shape == conv.shape and "WEIGHT NOT MERGED" in caplog.text
    else:
        from ldm_patched.modules.model_patcher import ModelPatcher
        calculate = ModelPatcher(torch.nn.Linear(1, 1)).calculate_weight
        torch.testing.assert_close(calculate([(1.0, ("lora", slots), 1.0)], weight.clone(), "w"), weight + up @ down)
        grown = calculate([(1.0, ("diff", (d,)), 1.0)], conv.clone(), "conv.weight")
        assert grown.shape == d.shape
        torch.testing.assert_close(grown[:, :4], conv + d[:, :4])


def test_concat_condition_is_encoded_scaled_and_repeated_to_the_batch(bridge, env):
    from ldm_patched.modules.conds import CONDRegular
    from modules_forge.forge_sampler import forge_sample
    torch.manual_seed(0)
    p = make_p(batch_size=3, width=64, height=48)
    unet = bridge.clone_unet(p)
    red = np.zeros((48, 64, 3), np.float32)
    red[..., 0] = 1.0
    grey = np.full((48, 64, 3), 0.5, np.float32)
    latent = bridge.encode_images(p, [red, grey])
    assert latent.shape == (1, 8, 6, 8)
    # VAE.encode (the posterior's mode in reForge, a sample with std 0.1 in old Forge), then the SDXL scaling
    vae = p.sd_model.forge_objects.vae
    for i, image in enumerate((red, grey)):
        mean = vae_moments(vae, torch.from_numpy(image[None]))[:, :4]
        tolerance = 0.0 if env.reforge else 0.13025 * 0.1 * 6
        torch.testing.assert_close(latent[:, 4 * i:4 * i + 4], mean * 0.13025, atol=tolerance + 1e-6, rtol=0)
    bridge.set_concat_condition(unet, latent, 3)
    assert unet.extra_concat_condition.shape == (3, 8, 6, 8)
    cond, uncond = conds(), conds()
    forge_sample(unet, torch.zeros(3, 4, 6, 8), 10.0, cond, uncond)
    for c in cond + uncond:
        assert isinstance(c["model_conds"]["c_concat"], CONDRegular)
        assert c["model_conds"]["c_concat"].cond.shape == (3, 8, 6, 8)
    assert p.sd_model.forge_objects.unet.extra_concat_condition is None


def test_stop_at_switches_to_the_unpatched_weights_and_drops_the_concat(bridge):
    from modules_forge import forge_sampler
    p = make_p()
    unpatched, unet = bridge.clone_unet(p), bridge.clone_unet(p)
    from lib_layerdiffusion.networks.unet_patch_file import parse_patch_file
    patches = parse_patch_file("f.safetensors", {"diffusion_model.out.weight::diff::0": torch.ones(8, 8)})
    bridge.add_weight_patches(unet, "f.safetensors", patches, 1.0)
    unet.extra_concat_condition = torch.ones(1, 4, 8, 8)
    bridge.add_stop_at(unet, unpatched, 0.5)
    sigma_end = unet.model.model_sampling.percent_to_sigma(0.5)
    assert 0.03 < sigma_end < 14.6  # the real schedule's sigma half-way
    x = torch.zeros(1, 4, 8, 8)
    plain = unet.model.diffusion_model.out.weight.detach().clone()
    forge_sampler.sampling_prepare(unet, x)  # Forge loads the installed (patched) UNet before sampling
    torch.testing.assert_close(unet.model.diffusion_model.out.weight, plain + 1)

    model, _, _, _, cond, *_ = forge_sampler.forge_sample(unet, x, sigma_end * 2, conds(), None)
    assert model is unet.model and "c_concat" in cond[0]["model_conds"]

    given = conds()
    model, _, _, uncond, cond, *_ = forge_sampler.forge_sample(unet, x, sigma_end / 2, given, conds())
    # the same model object, now carrying the unpatched patcher's weights
    assert model is unpatched.model
    torch.testing.assert_close(model.diffusion_model.out.weight, plain)
    assert "c_concat" not in cond[0]["model_conds"] and "c_concat" not in uncond[0]["model_conds"]
    assert "c_concat" in given[0]["model_conds"]  # the sampler's own dicts are left alone
    from ldm_patched.modules import model_management
    loaded = [m.model for m in model_management.current_loaded_models]
    forge_sampler.forge_sample(unet, x, sigma_end / 4, conds(), None)  # already loaded: not loaded again
    assert [m.model for m in model_management.current_loaded_models] == loaded and loaded[0] is unpatched
    assert unpatched.patches == {} and unpatched.extra_concat_condition is None


def test_stop_at_the_end_never_switches(bridge):
    """percent_to_sigma(1.0) is 0: even the schedule's last sigma keeps the patched UNet (plan.py asks for no
    stop-at then anyway)."""
    from modules_forge.forge_sampler import forge_sample
    p = make_p()
    unet = bridge.clone_unet(p)
    bridge.add_stop_at(unet, bridge.clone_unet(p), 1.0)
    sigma_min = float(unet.model.model_sampling.sigma_min)
    model, *_ = forge_sample(unet, torch.zeros(1, 4, 8, 8), sigma_min, conds(), None)
    assert model is unet.model and bridge.clone_unet(p) is not unet


class Unit(torch.nn.Module):
    """A module wrapping an attention module, as attention_sharing.AttentionSharingUnit does (`.original`)."""

    def __init__(self, original):
        super().__init__()
        self._wrapped = (original,)

    @property
    def original(self):
        return self._wrapped[0]


def test_sd15_object_patches_are_loaded_with_the_clone_and_give_way(bridge, env):
    from modules_forge.forge_sampler import sampling_prepare
    names = ("input_blocks.1.1.transformer_blocks.0.attn1", "middle_block.1.transformer_blocks.0.attn2")
    p = make_p(is_sdxl=False, attention_names=names)
    model = p.sd_model.forge_objects.unet.model.diffusion_model
    originals = bridge.attention_modules(bridge.clone_unet(p), names)
    assert [type(m).__name__ for m in originals] == ["CrossAttention", "CrossAttention"]

    unet = bridge.clone_unet(p)
    units = [Unit(m) for m in originals]
    bridge.replace_modules(unet, dict(zip(names, units)), torch.nn.ModuleList(units))
    assert sorted(unet.object_patches) == sorted("diffusion_model." + n for n in names)
    assert p.sd_model.forge_objects.unet.object_patches == {}
    sampling_prepare(unet, torch.zeros(1, 4, 8, 8))  # loaded: the units sit in the shared model
    assert model.get_submodule(names[0]) is units[0]

    # the next generation reads the originals: old Forge unloads the loaded clone first (unload_model_clones),
    # reForge leaves the units in place until the next load, and a unit gives the module it wraps
    assert bridge.attention_modules(bridge.clone_unet(p), names) == originals
    assert (model.get_submodule(names[0]) is originals[0]) is not env.reforge
    sampling_prepare(bridge.clone_unet(p), torch.zeros(1, 4, 8, 8))  # a plain sampling: originals in place
    assert [model.get_submodule(n) for n in names] == originals


def test_transformer_option_text_condition_and_devices(bridge):
    p = make_p(is_sdxl=False)
    unet = bridge.clone_unet(p)
    bridge.set_transformer_option(unet, "cond_overwrite", [None])
    assert unet.model_options["transformer_options"]["cond_overwrite"] == [None]
    assert p.sd_model.forge_objects.unet.model_options["transformer_options"] == {}
    cond = bridge.text_condition(p, "glass, a cat")
    assert cond.shape == (1, 77, 12) and cond[0, 0, 0].item() == len("glass, a cat")
    assert bridge.unet_device_and_dtype(unet) == (torch.device("cpu"), torch.float32)
    assert bridge.compute_device_and_dtype("fp16") == (torch.device("cpu"), torch.float32)
    assert bridge.base_model(p.sd_model).value == "SD1.5" and bridge.base_model(SimpleNamespace()) is None


def test_failures_stop_the_generation_with_the_error(bridge):
    from modules_forge.forge_sampler import forge_sample

    from lib_layerdiffusion.errors import LayerDiffuseError
    p = make_p()
    error = LayerDiffuseError("[LayerDiffuse] nope")
    bridge.fail_before_sampling(p, error)
    with pytest.raises(LayerDiffuseError, match="nope"):
        p.sample(conditioning=None)
    p = make_p()
    shared = p.sd_model.forge_objects.unet
    bridge.fail_sampling(p, error)
    assert p.sd_model.forge_objects.unet is not shared
    with pytest.raises(LayerDiffuseError, match="nope"):
        forge_sample(p.sd_model.forge_objects.unet, torch.zeros(1, 4, 8, 8), 1.0, conds(), None)


# --- the VAE --------------------------------------------------------------------------------------------------

def test_vae_regulation_proxy_gives_mean_plus_std_times_offset(bridge):
    """Neither host's VAE.encode passes a regulation on: the proxy first_stage_model on a VAE copy does it."""
    from lib_layerdiffusion.images.img2img import regulation_with_offsets
    p = make_p()
    shared = p.sd_model.forge_objects.vae
    offsets = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    calls = []
    assert bridge.set_vae_regulation(p, regulation_with_offsets(offsets, calls)) is True
    vae = p.sd_model.forge_objects.vae
    assert vae is not shared and vae.first_stage_model is not shared.first_stage_model
    assert vae.patcher is shared.patcher  # a shallow copy: the same host patcher and model
    pixels = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    rows = torch.cat([vae.encode(pixels[:1]), vae.encode(pixels[1:])])  # the host may encode in chunks
    moments = vae_moments(shared, pixels)
    torch.testing.assert_close(rows, moments[:, :4] + 0.1 * offsets, atol=1e-5, rtol=1e-5)
    assert calls == [1, 1]


def test_record_vae_decodes_keeps_the_raw_latent_on_a_vae_copy(bridge):
    p = make_p(batch_size=2)
    shared = p.sd_model.forge_objects.vae
    sink = []
    assert bridge.record_vae_decodes(p, sink) is True
    assert p.sd_model.forge_objects.vae is not shared
    latent = torch.randn(2, 4, 8, 8)
    pixels = p.sd_model.decode_first_stage(latent)  # modules_forge/forge_loader.py: process_out, VAE.decode
    assert pixels.shape == (2, 3, 64, 64)
    (recorded,) = sink
    torch.testing.assert_close(recorded, latent / 0.13025)


def test_resize_keeps_alpha_with_and_without_force_rgba(bridge, env):
    from modules import images
    assert ("force_RGBA" in inspect.signature(images.resize_image).parameters) is env.reforge
    arr = np.zeros((32, 48, 4), np.uint8)
    arr[8:24, 8:20] = (255, 0, 0, 255)
    image = Image.fromarray(arr, "RGBA")
    for mode in (0, 1, 2):
        out = bridge.resize_image(mode, image, 64, 64)
        assert out.mode == "RGBA" and out.size == (64, 64)
        alpha = np.asarray(out)[..., 3]
        assert alpha.max() == 255 and alpha.min() == 0
    # cover (mode 1): 48x32 scaled to 96x64, centre-cropped: the opaque block lands at x 0..24, y 16..48
    alpha = np.asarray(bridge.resize_image(1, image, 64, 64))[..., 3]
    assert alpha[32, 12] == 255 and alpha[32, 40] == 0 and alpha[4, 4] == 0


# --- settings, saving and the API -----------------------------------------------------------------------------

def test_settings_callbacks_and_saving_through_the_webui_modules(bridge, opts, tmp_path):
    from modules import paths, script_callbacks

    from lib_layerdiffusion.request.settings import OPTIONS, SECTION
    bridge.register_settings(OPTIONS, SECTION)
    script_callbacks.ui_settings_callback()
    assert all(opts.data_labels[o.key].section == SECTION for o in OPTIONS)
    assert opts.data_labels["layerdiffuse_decoder_passes"].component_args == {"choices": [1, 2, 4, 8]}
    # options.py add_option puts the default in .data: read_option gives it until the user saves another value
    assert bridge.read_option("layerdiffuse_save_preview", "unset") is False
    opts.data["layerdiffuse_save_preview"] = True
    assert bridge.read_option("layerdiffuse_save_preview", False) is True
    assert bridge.read_option("not_an_option", "x") == "x"
    assert bridge.default_models_folder() == str(Path(paths.models_path) / "layer_model")
    assert bridge.output_format() == "png" and bridge.vae_encode_is_full()

    seen = []
    bridge.on_image_saving(lambda image, p, filename: filename.replace(".png", "-fg.png"))
    bridge.on_image_saved(lambda image, p, filename, infotext: seen.append(filename))
    p = make_p(do_not_save_samples=False, outpath_samples=str(tmp_path))
    p.seeds, p.prompts = [7], ["a cat"]
    bridge.save_extra_image(p, Image.new("RGB", (8, 8)), 0, "-preview")
    assert seen and seen[0].endswith("-7-preview-fg.png") and Path(seen[0]).exists()
    p.do_not_save_samples = True  # API save_images=false
    bridge.save_extra_image(p, Image.new("RGB", (8, 8)), 0, "-preview", even_if_grid_only=True)
    assert len(seen) == 1

    class Middleware:
        def __init__(self, app):
            self.app = app

    bridge.install_api_middleware(Middleware)
    app = SimpleNamespace(user_middleware=[], middleware_stack="built")
    script_callbacks.app_started_callback(None, app)
    assert app.user_middleware[0].cls is Middleware and app.middleware_stack is None

    bridge.tell_user(p, "[LayerDiffuse] note")
    assert p.comments == {"[LayerDiffuse] note": 1}


# --- the Forge script on the legacy bridge -------------------------------------------------------------------

@pytest.fixture(scope="module")
def script(env):
    """scripts/layerdiffuse.py loaded in the legacy fake, with its model files in the fake's models folder."""
    from ldm_patched.modules.model_base import BaseModel, model_config
    from modules import paths
    from seeded_weights import seeded_state_dict

    from lib_layerdiffusion.networks.attention_sharing import (
        SD15_ATTENTION_LAYER_NAMES,
        SD15_CONFIGS,
        AttentionSharingModel,
        sd15_attention_modules,
    )
    layer = Path(paths.models_path) / "layer_model"
    layer.mkdir(exist_ok=True)
    for name in ("vae_transparent_decoder", "vae_transparent_encoder"):
        save_file(seeded_state_dict(name.removeprefix("vae_")), str(layer / f"{name}.safetensors"))
    save_file(seeded_state_dict("transparent_decoder"), str(layer / "layer_sd15_vae_transparent_decoder.safetensors"))
    gen = torch.Generator().manual_seed(0)
    save_file({"diffusion_model.out.weight::lora::0": torch.randn(8, 2, generator=gen) * 0.1,
               "diffusion_model.out.weight::lora::1": torch.randn(2, 8, generator=gen) * 0.1},
              str(layer / "layer_xl_transparent_attn.safetensors"))
    save_file({"diffusion_model.input_blocks.0.0.weight::diff::0": torch.randn(8, 8, 3, 3, generator=gen) * 0.1},
              str(layer / "layer_xl_fg2ble.safetensors"))
    unet = BaseModel(model_config(False), SD15_ATTENTION_LAYER_NAMES).diffusion_model
    with torch.device("meta"):
        shapes = AttentionSharingModel(sd15_attention_modules(unet), SD15_CONFIGS["sd15_joint"]).expected_shapes()
    save_file({k: torch.randn(s, generator=gen) * 0.01 for k, s in shapes.items()},
              str(layer / "layer_sd15_joint.safetensors"))
    for stem in ("sd15_transparent_attn", "sd15_fg2bg", "sd15_bg2fg"):
        with torch.device("meta"):
            shapes = AttentionSharingModel(sd15_attention_modules(unet), SD15_CONFIGS[stem]).expected_shapes()
        save_file({k: torch.randn(s, generator=gen) * 0.01 for k, s in shapes.items()},
                  str(layer / f"layer_{stem}.safetensors"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        spec = importlib.util.spec_from_file_location("layerdiffuse_legacy_script", ROOT / "scripts" / "layerdiffuse.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.bridge is env.bridge
        yield module.LayerDiffuseScript()


def script_args(method=ATTN, fg=None, ending_step=1.0, prompts=("", "", "")):
    return (True, method, 1.0, ending_step, fg, None, None, "Crop and Resize", False, *prompts)


def generate(script, p, args, latents=None):
    """The host's generation with our script as its only always-on script (modules/processing.py
    process_images_inner): process, init, then per batch sample (process_before_every_sampling inside), decode
    the batch (process_out, VAE.decode), and per image postprocess_image then postprocess_image_after_composite.
    `latents`: what the sampler returns. Returns the Processed."""
    from modules import processing, scripts
    script.args_from, script.args_to = 0, len(args)
    p.scripts, p.script_args = scripts.ScriptRunner([script]), tuple(args)
    p.sampler_latents = latents
    return processing.process_images_inner(p)


@pytest.fixture()
def decoder_calls(monkeypatch):
    """The (pixel, latent) each TransparentDecoder.decode call gets."""
    from lib_layerdiffusion.networks.transparent_vae import TransparentDecoder
    seen = []
    decode = TransparentDecoder.decode
    monkeypatch.setattr(TransparentDecoder, "decode", lambda self, pixel, latent, passes=8:
                        seen.append((pixel, latent)) or decode(self, pixel, latent, passes))
    return seen


def test_script_sdxl_transparent_image_at_every_index(script, bridge, env, decoder_calls):
    from modules_forge import forge_sampler
    p = make_p(batch_size=2)
    shared = p.sd_model.forge_objects_after_applying_lora.unet
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    processed = generate(script, p, script_args(ATTN), latents)
    assert p.scripts.errors == []
    assert [im.mode for im in processed.images] == ["RGBA", "RGBA"]
    assert len(processed.extra_images) == 2 and all(im.mode == "RGB" for im in processed.extra_images)
    # the transparent decoder read each image's raw latent: what VAE.decode got, process_out of the sampler's
    assert len(decoder_calls) == 2
    for i, (_, latent) in enumerate(decoder_calls):
        torch.testing.assert_close(latent, latents[i:i + 1] / 0.13025)
    # the LoRA went on a clone the sampler used; the shared patcher is untouched
    assert forge_sampler.sampled[0][0] is shared.model and shared.patches == {}
    assert p.sd_model.forge_objects.unet is not shared
    assert list(p.sd_model.forge_objects.unet.patches) == ["diffusion_model.out.weight"]
    json.loads(processed.js())
    assert ("pixels_after_sampling" in vars(p)) is env.reforge  # LayerDiffuse needs it on neither host


def test_script_sd15_joint_batch_3(script, bridge, env, decoder_calls):
    from lib_layerdiffusion.networks.attention_sharing import (
        SD15_ATTENTION_LAYER_NAMES,
        InstalledUnit,
    )
    p = make_p(is_sdxl=False, batch_size=3, attention_names=SD15_ATTENTION_LAYER_NAMES)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    processed = generate(script, p, script_args(JOINT, prompts=("glass", "", "on a table")), latents)
    assert p.scripts.errors == []
    assert [im.mode for im in processed.images] == ["RGBA", "RGB", "RGB"]  # only the foreground frame
    ((_, latent),) = decoder_calls
    torch.testing.assert_close(latent, latents[:1] / 0.18215)
    unet = p.sd_model.forge_objects.unet
    assert sorted(unet.object_patches) == sorted("diffusion_model." + n for n in SD15_ATTENTION_LAYER_NAMES)
    assert all(isinstance(u, InstalledUnit) for u in unet.object_patches.values())
    fg, bg, blend = unet.model_options["transformer_options"]["cond_overwrite"]
    assert fg[0, 0, 0].item() == len("glass, a cat") and bg is None
    assert blend[0, 0, 0].item() == len("on a table, a cat")

    # the layer of each image in its infotext: per image where the host calls callables (reForge); old Forge
    # would write a callable's repr and its Processed.js() would raise, so none is put there
    params = p.extra_generation_params
    assert json.loads(processed.js())["infotexts"] == processed.infotexts
    assert not any("<function" in text for text in processed.infotexts)
    if env.reforge:
        assert callable(params["layerdiffusion_layer"])
        assert [t.rsplit("layerdiffusion_layer: ", 1)[1].split(",")[0] for t in processed.infotexts] == \
            ["fg", "bg", "blend"]
    else:
        assert "layerdiffusion_layer" not in params and not any(callable(v) for v in params.values())


SD15_METHODS = (  # method, its frames (the batch size), which control image it takes
    ("(SD1.5) Only Generate Transparent Image (Attention Injection)", 1, None),
    ("(SD1.5) From Foreground to Background (need batch size 2)", 2, "fg"),
    ("(SD1.5) From Background to Foreground (need batch size 2)", 2, "bg"),
    (JOINT, 3, None),
)


@pytest.mark.parametrize("method, frames, control", SD15_METHODS)
def test_script_sd15_units_keep_a_users_lora_and_leave_nothing_patched(script, bridge, env, method, frames,
                                                                      control):
    """A user's LoRA on attn1, attn2, ff and conv layers stays active under every SD1.5 method (the layers compute
    otherwise than at <lora:x:0>), also when the previous generation's units are still in the UNet as the LoRA is
    added (reForge leaves them in until the next load); a plain generation after finds the UNet's own modules and
    weights again. reForge merges what ModelPatcher.load finds walking named_modules with the units in (:589),
    old Forge what the model's state_dict lists then (:199)."""
    from ldm_patched.modules import model_management

    from lib_layerdiffusion.networks.attention_sharing import SD15_ATTENTION_LAYER_NAMES, InstalledUnit
    from user_lora import FF_LAYER, LAYERS, differing, layer_outputs, lora_deltas, weights

    def load():
        from modules_forge.forge_loader import load_model
        return load_model(False, SD15_ATTENTION_LAYER_NAMES, (FF_LAYER,))

    sd_model = load()
    shared = sd_model.forge_objects_original.unet
    diffusion_model = shared.model.diffusion_model
    before = weights(diffusion_model)
    originals = {name: diffusion_model.get_submodule(name) for name in SD15_ATTENTION_LAYER_NAMES}
    deltas = lora_deltas(diffusion_model)
    if env.reforge:  # ldm_patched/modules/lora.py load_lora (3b56b268 :37): a weight_adapter per key
        from ldm_patched.modules.weight_adapter import LoRAAdapter
        patches = {key: LoRAAdapter(set(), (up, down, None, None, None, None)) for key, (up, down) in deltas.items()}
    else:  # ldm_patched/modules/lora.py load_lora (bfee03d8 :50)
        patches = {key: ("lora", (up, down, None, None)) for key, (up, down) in deltas.items()}
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    args = (True, method, 1.0, 1.0, image if control == "fg" else None, image if control == "bg" else None, None,
            "Crop and Resize", False, "", "", "")

    def generate_with_lora(strength):
        from modules import processing
        # extensions-builtin/Lora/networks.py load_networks (3b56b268 :95-104): the LoRA on a clone of the
        # original UNet (sd.py load_lora_for_models: clone, add_patches), kept as forge_objects_after_applying_lora
        lora = shared.clone()
        assert sorted(lora.add_patches(patches, strength)) == sorted(patches)
        sd_model.forge_objects_after_applying_lora.unet = lora
        p = processing.StableDiffusionProcessingTxt2Img(sd_model, batch_size=frames, width=64, height=64)
        p.prompts, p.seeds, p.all_seeds = [p.prompt] * frames, list(range(frames)), list(range(frames))
        generate(script, p, args, torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(1)))
        assert p.scripts.errors == []
        assert all(isinstance(diffusion_model.get_submodule(n), InstalledUnit) for n in SD15_ATTENTION_LAYER_NAMES)
        return layer_outputs(diffusion_model, frames, p.sd_model.forge_objects.unet.model_options["transformer_options"])

    at_zero = generate_with_lora(0.0)
    at_one = generate_with_lora(1.0)
    assert differing(at_one, at_zero) == list(LAYERS)

    model_management.load_models_gpu([shared.clone()])  # the next, plain generation's load
    assert all(diffusion_model.get_submodule(name) is module for name, module in originals.items())
    after = weights(diffusion_model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@only("previous")
def test_previous_api_body_would_fail_on_a_callable(script, bridge):
    """The host behaviour the script avoids on `previous`: Processed.js() is json.dumps without default=."""
    from modules import processing
    p = make_p()
    p.all_prompts, p.all_seeds = ["a cat"], [1]
    p.extra_generation_params["x"] = lambda **_: "fg"
    with pytest.raises(TypeError, match="not JSON serializable"):
        processing.Processed(p, []).js()
    assert "x: <function" in processing.create_infotext(p, ["a cat"], [1], [1], index=0)


def test_script_sdxl_concat_method_with_stop_at(script, bridge, decoder_calls):
    from modules_forge import forge_sampler
    fg = Image.new("RGBA", (40, 30), (255, 0, 0, 255))
    p = make_p(batch_size=2)
    shared = p.sd_model.forge_objects_after_applying_lora.unet
    model = shared.model.diffusion_model
    conv_before = model.get_submodule("input_blocks.0.0").weight.detach().clone()
    processed = generate(script, p, script_args(FG2BLE, fg=fg, ending_step=0.5))
    assert p.scripts.errors == [] and decoder_calls == []  # the blend is not transparent
    assert [im.mode for im in processed.images] == ["RGB", "RGB"]
    first, _middle, last = forge_sampler.sampled
    # before the ending step: the patched UNet with the foreground's latent as c_concat for the whole batch
    assert first[0] is shared.model and first[4][0]["model_conds"]["c_concat"].cond.shape == (2, 4, 8, 8)
    # after it: no c_concat, and the weights loaded are the unpatched ones
    assert "c_concat" not in last[4][0]["model_conds"] and "c_concat" not in last[3][0]["model_conds"]
    torch.testing.assert_close(model.get_submodule("input_blocks.0.0").weight, conv_before)
    from ldm_patched.modules import model_management
    installed = p.sd_model.forge_objects.unet
    (loaded,) = [m.model for m in model_management.current_loaded_models if m.model.is_clone(installed)]
    assert list(installed.patches) == ["diffusion_model.input_blocks.0.0.weight"] and shared.patches == {}
    assert loaded is not installed and loaded.patches == {}  # the UNet loaded last: the unpatched clone


@only("previous")
def test_previous_refuses_transparent_img2img_naming_the_host(script, bridge):
    from modules_forge import forge_sampler

    from lib_layerdiffusion.errors import LayerDiffuseError
    p = make_p(init_images=[transparent_disc()])
    with pytest.raises(LayerDiffuseError, match="Transparent img2img needs a newer Forge") as raised:
        generate(script, p, script_args(ATTN))
    assert "old Forge 'previous'" in str(raised.value) and "before_process_init_images" in str(raised.value)
    assert forge_sampler.sampled == []  # p.sample raised before any sampling
    assert "layerdiffuse_init" not in vars(p)


def transparent_disc(size=64, centre=(20, 24), radius=14):
    yy, xx = np.mgrid[:size, :size]
    arr = np.zeros((size, size, 4), np.uint8)
    arr[(yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 < radius ** 2] = (0, 0, 255, 255)
    return Image.fromarray(arr, "RGBA")


@only("reforge")
def test_reforge_transparent_img2img_end_to_end(script, bridge, decoder_calls):
    """reForge's VAE.encode passes no regulation (sd.py:889): the proxy first_stage_model on a VAE copy makes
    the init latent the posterior mean + std · the transparency offset of each init image."""
    from seeded_weights import seeded_state_dict

    from lib_layerdiffusion.networks.transparent_vae import load_transparent_encoder
    init = transparent_disc()
    p = make_p(batch_size=1, init_images=[init])
    original_vae = p.sd_model.forge_objects_original.vae
    processed = generate(script, p, script_args(ATTN))
    assert p.scripts.errors == [] and p.comments == {}  # the offset was applied: nothing to tell the user
    flattened = p.init_images[0]
    assert flattened.mode == "RGB" and tuple(np.asarray(flattened)[0, 0]) == (127, 127, 127)
    pixels = torch.from_numpy(np.asarray(flattened, np.float32)[None] / 255)
    moments = vae_moments(original_vae, pixels)
    offset = load_transparent_encoder(seeded_state_dict("transparent_encoder")).encode(np.asarray(init))
    expected = (moments[:, :4] + 0.1 * offset) * 0.13025  # then the UNet's latent format (process_in)
    torch.testing.assert_close(p.init_latent, expected, atol=1e-5, rtol=1e-5)
    assert p.layerdiffuse_init.regulation_calls == [1]
    assert [im.mode for im in processed.images] == ["RGBA"] and len(decoder_calls) == 1
    assert p.sd_model.forge_objects_original.vae is original_vae  # the VAE copy lived for this init only
    assert type(original_vae.first_stage_model).__name__ == "AutoencoderKL"


@only("reforge")
def test_reforge_stealth_infotext_rgb_mode_is_refused_before_sampling(script, bridge, opts):
    from lib_layerdiffusion.errors import LayerDiffuseError
    opts.data["stealth_pnginfo_opt"] = "RGB"  # reForge's Settings → Stealth infotext mode
    p = make_p()
    with pytest.raises(LayerDiffuseError, match="Stealth infotext mode"):
        generate(script, p, script_args(ATTN))


# --- never a silently wrong alpha (every failure path stops, or decodes from this image's latent) --------------

def generate_closed(script, p, args, latents=None):
    """generate() as the API and the UI run it: `with closing(p)` (modules/api/api.py:467 / :520 and
    modules/txt2img.py), so p.close() is called when processing ends or fails."""
    with contextlib.closing(p):
        return generate(script, p, args, latents)


def test_taesd_decode_setting_still_decodes_the_alpha_from_the_full_vaes_latent(script, bridge, opts,
                                                                                  decoder_calls):
    """'VAE type for decode' = TAESD: Forge's decode would never run the checkpoint's VAE (no latent recorded;
    pixels the transparent decoder was not trained on). The script decodes with the full VAE in post_sample."""
    opts.data["sd_vae_decode_method"] = "TAESD"
    p = make_p(batch_size=2)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    processed = generate_closed(script, p, script_args(ATTN), latents)
    assert p.scripts.errors == []
    assert [im.mode for im in processed.images] == ["RGBA", "RGBA"]
    assert len(decoder_calls) == 2
    for i, (pixel, latent) in enumerate(decoder_calls):
        torch.testing.assert_close(latent, latents[i:i + 1] / 0.13025)  # this image's raw latent
        full = p.sd_model.forge_objects.vae.decode(latents[i:i + 1] / 0.13025)  # the full VAE's pixels
        assert (pixel[0].permute(1, 2, 0) - full[0]).abs().max() <= 1 / 255 + 1e-6
    assert any("VAE type for decode" in text for text in p.comments)  # the user is told


def test_a_decode_that_no_vae_saw_stops_the_generation(script, bridge, monkeypatch):
    """Another script decoding the latents itself (already_decoded, not through the VAE): no raw latent exists
    for the image, so the request stops with a message instead of decoding the alpha from the pixels alone."""
    from modules import processing, scripts as host_scripts

    from lib_layerdiffusion.errors import LayerDiffuseError

    class DecodesItself(host_scripts.Script):
        def process(self, p, *args, **kwargs):  # modules/scripts.py Script: every other hook does nothing
            pass

        process_before_every_sampling = postprocess_image = postprocess_image_after_composite = process

        def post_sample(self, p, ps, *args):
            decoded = processing.DecodedSamples()
            decoded.extend(torch.tanh(ps.samples[:, :3]))
            ps.samples = decoded

    p = make_p()
    args = script_args(ATTN)
    script.args_from, script.args_to = 0, len(args)
    other = DecodesItself()
    other.args_from = other.args_to = len(args)
    p.scripts, p.script_args = host_scripts.ScriptRunner([script, other]), tuple(args)
    with pytest.raises(LayerDiffuseError, match="did not decode this image's latent"):
        with contextlib.closing(p):
            processing.process_images_inner(p)
    assert p.scripts.errors == []


def test_an_unexpected_error_while_patching_stops_instead_of_reusing_the_last_latent(script, bridge, monkeypatch,
                                                                                      decoder_calls):
    """Batch count 2, the second patch fails with an error that is not ours (out of memory): Forge's script
    runner would swallow it and sample unpatched, and the image would be decoded with the first batch's latent.
    The generation stops at the second sampling's first step with the message; nothing of batch 1 is read."""
    from lib_layerdiffusion import generation
    from lib_layerdiffusion.errors import HookError
    calls = []
    patch_unet = generation.patch_unet

    def failing_second_time(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return patch_unet(*a, **k)

    monkeypatch.setattr(generation, "patch_unet", failing_second_time)
    p = make_p(n_iter=2)
    p.all_seeds = [0, 1]
    with pytest.raises(HookError, match="Patching the model failed.*CUDA out of memory.*Out of memory"):
        generate_closed(script, p, script_args(ATTN))
    assert p.scripts.errors == []  # nothing reached the script runner's log-and-go-on
    assert len(decoder_calls) == 1  # the first batch only
    assert p.layerdiffuse_decoded_latents is None  # the second sampling started from a clean slate


def test_a_failing_transparent_decode_stops_the_request_and_the_next_one_is_fine(script, bridge, monkeypatch):
    from lib_layerdiffusion.errors import HookError
    from lib_layerdiffusion.networks.transparent_vae import TransparentDecoder
    decode = TransparentDecoder.decode

    def out_of_memory(self, *a, **k):
        raise MemoryError()

    monkeypatch.setattr(TransparentDecoder, "decode", out_of_memory)
    p = make_p()
    with pytest.raises(HookError, match="Decoding the transparency failed.*Out of memory"):
        generate_closed(script, p, script_args(ATTN))
    assert p.scripts.errors == []
    monkeypatch.setattr(TransparentDecoder, "decode", decode)
    p = make_p()
    processed = generate_closed(script, p, script_args(ATTN))
    assert [im.mode for im in processed.images] == ["RGBA"] and p.scripts.errors == []


@only("reforge")
def test_an_interrupted_img2img_leaves_no_regulation_for_the_next_request(script, bridge):
    """Interrupted after the init images were encoded (modules/processing.py:1016 breaks before Forge rebuilds
    forge_objects): the regulated VAE copy is still on sd_model.forge_objects. The next img2img, here with
    LayerDiffuse off, must encode its init image without that request's offsets."""
    from modules import processing, scripts as host_scripts
    from modules.shared import state
    disc = transparent_disc()
    p = make_p(init_images=[disc])
    args = script_args(ATTN)
    script.args_from, script.args_to = 0, len(args)
    p.scripts, p.script_args = host_scripts.ScriptRunner([script]), tuple(args)
    state.interrupted = True
    try:
        with pytest.raises(IndexError):  # the fake's Processed of no image; Forge returns an empty result
            processing.process_images_inner(p)
    finally:
        state.interrupted = False
    assert p.layerdiffuse_init.regulation_calls == [1]  # the init image was encoded with the offset

    opaque = Image.new("RGB", (64, 64), (30, 160, 90))
    disabled = (False, *args[1:])
    nxt = make_p(init_images=[opaque])
    nxt.sd_model = p.sd_model  # the same loaded checkpoint
    generate(script, nxt, disabled)
    clean = make_p(init_images=[opaque])
    generate(script, clean, disabled)
    assert nxt.scripts.errors == [] and not hasattr(nxt, "layerdiffuse_init")
    torch.testing.assert_close(nxt.init_latent, clean.init_latent)


@only("reforge")
def test_an_init_image_encoder_failure_leaves_the_init_images_and_the_vae_alone(script, bridge, monkeypatch):
    from lib_layerdiffusion import generation
    from lib_layerdiffusion.errors import HookError
    from lib_layerdiffusion.hosts.comfy_patcher import _RegulatedAutoencoder

    def failing_encoder(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(generation, "load_transparent_encoder", failing_encoder)
    generation._built._items.clear()
    disc = transparent_disc()
    p = make_p(init_images=[disc])
    with pytest.raises(HookError, match="Preparing the init images failed.*illegal memory access"):
        generate_closed(script, p, script_args(ATTN))
    assert p.init_images[0] is disc  # not flattened without its offset
    assert not isinstance(p.sd_model.forge_objects.vae.first_stage_model, _RegulatedAutoencoder)
    assert not hasattr(p, "layerdiffuse_init")
