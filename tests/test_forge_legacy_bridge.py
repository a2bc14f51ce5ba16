"""The bridge to the older Forge generation (lib_layerdiffusion/hosts/forge_legacy.py) against a small fake of
it (tests/fake_forge_legacy: ldm_patched/ and modules_forge/ as in Forge 4a9c8f32), and the Forge script on top.

The fake's `modules` package has the same name as tests/fake_forge's, so every test here runs inside
`legacy_forge()`: the host packages already imported are set aside, sys.path shows only this fake, and on
leaving everything is put back as it was. Other test files see no trace, whatever the order.

Nothing here has run in a real old Forge or reForge: the fake proves that the bridge uses that API the way its
files define it, not that those files behave like the fake.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import logging
import re
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
FAKE_LEGACY = Path(__file__).parent / "fake_forge_legacy"
FAKE_CURRENT = Path(__file__).parent / "fake_forge"
HOST_PACKAGES = ("modules", "backend", "ldm_patched", "modules_forge")
BRIDGE = "lib_layerdiffusion.hosts.forge_legacy"
# our modules that bind to the Forge they are imported in: imported afresh under the fake, set aside after
HOST_BOUND = (BRIDGE, "lib_layerdiffusion.hosts.webui")

ATTN = "(SDXL) Only Generate Transparent Image (Attention Injection)"
FG2BLE = "(SDXL) From Foreground to Blending"
JOINT = "(SD1.5) Generate Everything Together (need batch size 3)"


def _is_host_module(name: str) -> bool:
    return name.split(".")[0] in HOST_PACKAGES or name in HOST_BOUND


@contextlib.contextmanager
def legacy_forge():
    """This process as an old Forge would have it: ldm_patched / modules_forge / modules from the legacy fake,
    no `backend`. Restores sys.modules, sys.path and the hosts package's attributes afterwards."""
    saved_path = list(sys.path)
    sys.path.insert(0, str(ROOT))
    hosts = importlib.import_module("lib_layerdiffusion.hosts")
    missing = object()
    attrs = [name.rsplit(".", 1)[1] for name in HOST_BOUND]
    saved_attrs = {attr: hosts.__dict__.get(attr, missing) for attr in attrs}
    saved_modules = {name: module for name, module in sys.modules.items() if _is_host_module(name)}
    for name in saved_modules:
        del sys.modules[name]
    current = FAKE_CURRENT.resolve()
    sys.path[:] = [str(FAKE_LEGACY), str(ROOT)] + [
        p for p in saved_path if not p or Path(p).resolve() != current]
    importlib.invalidate_caches()
    try:
        yield hosts
    finally:
        for name in [n for n in sys.modules if _is_host_module(n)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path
        for attr, saved in saved_attrs.items():
            if saved is missing:
                hosts.__dict__.pop(attr, None)
            else:
                setattr(hosts, attr, saved)
        importlib.invalidate_caches()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The legacy fake in place for this module's tests; yields the hosts package and the bridge."""
    with legacy_forge() as hosts:
        import modules.paths
        modules.paths.models_path = str(tmp_path_factory.mktemp("legacy_models"))
        bridge = importlib.import_module(BRIDGE)
        yield SimpleNamespace(hosts=hosts, bridge=bridge)


@pytest.fixture()
def bridge(env):
    from modules_forge import forge_sampler
    from ldm_patched.modules import model_management
    model_management.current_loaded_models.clear()
    forge_sampler.prepared.clear()
    return env.bridge


def make_p(is_sdxl=True, batch_size=1, width=64, height=64, attention_names=()):
    """modules/processing.py StableDiffusionProcessing with sd_model.forge_objects as
    modules_forge/forge_loader.py builds them (unet, vae, clip), and the fields the hooks use."""
    from ldm_patched.modules.model_base import BaseModel
    from ldm_patched.modules.sd import CLIP, VAE
    from modules_forge.unet_patcher import UnetPatcher

    unet = UnetPatcher(BaseModel(attention_names, sdxl=is_sdxl))
    sd_model = SimpleNamespace(is_sdxl=is_sdxl, is_sd1=not is_sdxl,
                               forge_objects=SimpleNamespace(unet=unet, vae=VAE(), clip=CLIP()))
    comments = {}
    return SimpleNamespace(sd_model=sd_model, batch_size=batch_size, width=width, height=height,
                           extra_generation_params={}, extra_result_images=[], latents_after_sampling=[],
                           pixels_after_sampling=[], sample=lambda *a, **k: "sampled", comments=comments,
                           prompts=["a cat"], comment=lambda text: comments.__setitem__(text, 1))


def conds():
    return [{"model_conds": {}}]


# --- choosing the bridge --------------------------------------------------------------------------------------

def test_load_bridge_picks_the_legacy_bridge_when_only_ldm_patched_exists(env):
    assert importlib.util.find_spec("backend") is None
    assert env.hosts.load_bridge() is env.bridge
    assert env.bridge.NAME == "Forge (ldm_patched)"


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
    for name in [n for n in sys.modules if n.split(".")[0] == "ldm_patched"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(FAKE_LEGACY)])
    with pytest.raises(LayerDiffuseError, match="No supported Forge"):
        env.hosts.load_bridge()


def _signatures_of_source(path: Path) -> dict[str, list[tuple[str, str | None]]]:
    """Public top-level functions of a module's source: parameter names with their default's source."""
    tree = ast.parse(path.read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            args = node.args.args
            defaults = [None] * (len(args) - len(node.args.defaults)) + [ast.unparse(d) for d in node.args.defaults]
            found[node.name] = [(a.arg, d) for a, d in zip(args, defaults)]
    return found


def test_every_function_of_the_current_bridge_exists_with_the_same_signature(bridge):
    hosts = ROOT / "lib_layerdiffusion" / "hosts"
    # the current bridge's interface: its own functions and the shared WebUI-layer ones it re-exports
    expected = {**_signatures_of_source(hosts / "webui.py"), **_signatures_of_source(hosts / "forge_backend.py")}
    assert len(expected) > len(_signatures_of_source(hosts / "webui.py")), "forge_backend.py defines no functions?"
    reexported = set(_signatures_of_source(hosts / "webui.py"))
    assert reexported <= set(re.findall(r"\b(\w+)\b", (hosts / "forge_backend.py").read_text()))
    for name, params in expected.items():
        function = getattr(bridge, name, None)
        assert callable(function), f"forge_legacy lacks {name}"
        actual = [(p.name, None if p.default is inspect.Parameter.empty else repr(p.default))
                  for p in inspect.signature(function).parameters.values()]
        assert actual == params, name
        assert function.__doc__, f"{name} names no Forge file"


# --- the UNet -------------------------------------------------------------------------------------------------

def test_weight_patches_go_on_a_clone_with_matched_and_total_counts(bridge):
    from lib_layerdiffusion.errors import ModelFileError
    p = make_p()
    shared = p.sd_model.forge_objects.unet
    unet = bridge.clone_unet(p)
    state = {
        "diffusion_model.out.weight::lora::0": torch.full((8, 2), 0.1),
        "diffusion_model.out.weight::lora::1": torch.full((2, 8), 0.1),
        "diffusion_model.input_blocks.0.0.weight::diff::0": torch.ones(8, 8, 3, 3),
        "diffusion_model.not_a_layer.weight::diff::0": torch.zeros(3),
    }
    assert bridge.add_weight_patches(unet, "layer_xl_fg2ble.safetensors", state, 0.5) == (2, 3)
    assert unet is not shared and shared.patches == {}
    ((strength, (kind, slots), strength_model),) = unet.patches["diffusion_model.out.weight"]
    assert (strength, kind, strength_model) == (0.5, "lora", 1.0) and len(slots) == 16
    assert slots[0].shape == (8, 2) and slots[1].shape == (2, 8) and slots[2] is None

    # ModelPatcher.patch_model merges them as the old calculate_weight does; unpatch_model restores
    conv_before = unet.model.diffusion_model.get_submodule("input_blocks.0.0").weight.detach().clone()
    out_before = unet.model.diffusion_model.out.weight.detach().clone()
    unet.patch_model()
    conv = unet.model.diffusion_model.get_submodule("input_blocks.0.0").weight
    assert conv.shape == (8, 8, 3, 3)  # grown to the extra concat channels
    torch.testing.assert_close(conv[:, :4], conv_before + 0.5)
    torch.testing.assert_close(conv[:, 4:], torch.full((8, 4, 3, 3), 0.5))
    torch.testing.assert_close(unet.model.diffusion_model.out.weight, out_before + 0.5 * 0.02)
    unet.unpatch_model()
    torch.testing.assert_close(unet.model.diffusion_model.get_submodule("input_blocks.0.0").weight, conv_before)

    with pytest.raises(ModelFileError, match="not a LayerDiffuse UNet patch file"):
        bridge.add_weight_patches(unet, "x.safetensors", {"diffusion_model.out.weight": torch.zeros(1)}, 1.0)


def test_lora_patches_become_adapters_where_the_forge_has_them(bridge, monkeypatch):
    """reForge's newer ComfyUI code (ldm_patched/modules/weight_adapter) merges LoRAs only as adapters."""
    adapters = ModuleType("ldm_patched.modules.weight_adapter")

    class LoRAAdapter:
        def __init__(self, loaded_keys, weights):
            self.loaded_keys, self.weights = loaded_keys, weights

    adapters.LoRAAdapter = LoRAAdapter
    monkeypatch.setitem(sys.modules, adapters.__name__, adapters)
    unet = bridge.clone_unet(make_p())
    state = {"diffusion_model.out.weight::lora::0": torch.zeros(8, 2),
             "diffusion_model.out.weight::lora::1": torch.zeros(2, 8)}
    assert bridge.add_weight_patches(unet, "a.safetensors", state, 1.0) == (1, 1)
    ((_, value, _),) = unet.patches["diffusion_model.out.weight"]
    assert isinstance(value, LoRAAdapter) and value.weights[0].shape == (8, 2) and value.weights[4] is None


def test_concat_condition_is_scaled_and_repeated_to_the_batch(bridge):
    from modules_forge.forge_sampler import CONDRegular, forge_sample_step
    p = make_p(batch_size=3, width=64, height=48)
    unet = bridge.clone_unet(p)
    red = np.zeros((48, 64, 3), np.float32)
    red[..., 0] = 1.0
    latent = bridge.encode_images(p, [red, np.full((48, 64, 3), 0.5, np.float32)])
    assert latent.shape == (1, 8, 6, 8)
    # VAE.encode (2x-1 pooled) then the SDXL latent scaling
    torch.testing.assert_close(latent[0, 0], torch.full((6, 8), 0.13025))
    torch.testing.assert_close(latent[0, 4:], torch.zeros(4, 6, 8))
    bridge.set_concat_condition(unet, latent, 3)
    assert unet.extra_concat_condition.shape == (3, 8, 6, 8)
    cond, uncond = conds(), conds()
    forge_sample_step(unet, torch.zeros(3, 4, 6, 8), 10.0, cond, uncond)
    for c in cond + uncond:
        assert isinstance(c["model_conds"]["c_concat"], CONDRegular)
        assert c["model_conds"]["c_concat"].cond.shape == (3, 8, 6, 8)


def test_stop_at_switches_to_the_unpatched_unet_and_drops_the_concat(bridge):
    from modules_forge import forge_sampler
    p = make_p()
    unpatched, unet = bridge.clone_unet(p), bridge.clone_unet(p)
    bridge.add_weight_patches(unet, "f.safetensors", {"diffusion_model.out.weight::diff::0": torch.ones(8, 8)}, 1.0)
    unet.extra_concat_condition = torch.ones(1, 4, 8, 8)
    bridge.add_stop_at(unet, unpatched, 0.5)
    sigma_end = unet.model.model_sampling.percent_to_sigma(0.5)
    x = torch.zeros(1, 4, 8, 8)
    plain = unet.model.diffusion_model.out.weight.detach().clone()
    forge_sampler.sampling_prepare(unet, x)  # Forge loads the installed (patched) UNet before sampling
    torch.testing.assert_close(unet.model.diffusion_model.out.weight, plain + 1)

    model, cond, _ = forge_sampler.forge_sample_step(unet, x, sigma_end * 2, conds(), None)
    assert model is unet.model and "c_concat" in cond[0]["model_conds"] and forge_sampler.prepared == [unet]

    given = conds()
    model, cond, uncond = forge_sampler.forge_sample_step(unet, x, sigma_end / 2, given, conds())
    # the same model object, now with the unpatched patcher's weights loaded
    assert model is unpatched.model and forge_sampler.prepared == [unet, unpatched]
    torch.testing.assert_close(model.diffusion_model.out.weight, plain)
    assert "c_concat" not in cond[0]["model_conds"] and "c_concat" not in uncond[0]["model_conds"]
    assert "c_concat" in given[0]["model_conds"]  # the sampler's own dicts are left alone
    forge_sampler.forge_sample_step(unet, x, sigma_end / 4, conds(), None)
    assert forge_sampler.prepared == [unet, unpatched]  # already loaded: not prepared again
    assert unpatched.patches == {} and unpatched.extra_concat_condition is None


def test_stop_at_the_end_adds_nothing(bridge):
    p = make_p()
    unet = bridge.clone_unet(p)
    bridge.add_stop_at(unet, bridge.clone_unet(p), 1.0)
    assert "conditioning_modifiers" not in unet.model_options


def test_object_patches_and_the_modules_they_replace(bridge, monkeypatch):
    from ldm_patched.modules import model_management
    from modules_forge.forge_sampler import sampling_prepare
    names = ("input_blocks.1.1.transformer_blocks.0.attn1", "middle_block.1.transformer_blocks.0.attn2")
    p = make_p(is_sdxl=False, attention_names=names)
    originals = bridge.attention_modules(bridge.clone_unet(p), names)
    assert [type(m).__name__ for m in originals] == ["FakeAttention", "FakeAttention"]

    class Unit(torch.nn.Module):
        def __init__(self, original):
            super().__init__()
            self._wrapped = (original,)

        @property
        def original(self):
            return self._wrapped[0]

    unet = bridge.clone_unet(p)
    units = [Unit(m) for m in originals]
    bridge.replace_modules(unet, dict(zip(names, units)))
    assert sorted(unet.object_patches) == sorted("diffusion_model." + n for n in names)
    assert p.sd_model.forge_objects.unet.object_patches == {}
    sampling_prepare(unet, torch.zeros(1, 4, 8, 8))  # loaded: the units sit in the shared model
    assert unet.model.diffusion_model.get_submodule(names[0]) is units[0]

    # the next generation: unload_model_clones puts the originals back first
    assert bridge.attention_modules(bridge.clone_unet(p), names) == originals
    assert unet.model.diffusion_model.get_submodule(names[0]) is originals[0]
    assert model_management.current_loaded_models == []

    # reForge has no unload_model_clones: a unit still in place is unwrapped
    sampling_prepare(unet, torch.zeros(1, 4, 8, 8))
    monkeypatch.delattr(model_management, "unload_model_clones")
    assert bridge.attention_modules(bridge.clone_unet(p), names) == originals


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
    assert bridge.base_model(p.sd_model).value and bridge.base_model(SimpleNamespace()) is None


def test_failures_stop_the_generation_with_the_error(bridge):
    from lib_layerdiffusion.errors import LayerDiffuseError
    from modules_forge.forge_sampler import forge_sample_step
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
        forge_sample_step(p.sd_model.forge_objects.unet, torch.zeros(1, 4, 8, 8), 1.0, conds(), None)


# --- img2img --------------------------------------------------------------------------------------------------

def test_vae_regulation_rides_on_a_vae_clone(bridge):
    from lib_layerdiffusion.images.img2img import regulation_with_offsets
    p = make_p()
    shared = p.sd_model.forge_objects.vae
    offsets = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    calls = []
    bridge.set_vae_regulation(p, regulation_with_offsets(offsets, calls))
    vae = p.sd_model.forge_objects.vae
    assert vae is not shared and "model_vae_regulation" not in shared.patcher.model_options
    pixels = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    plain = shared.encode(pixels)
    rows = torch.cat([vae.encode(pixels[:1]), vae.encode(pixels[1:])])  # Forge may encode in chunks
    torch.testing.assert_close((rows - plain) / 0.1, offsets, atol=1e-4, rtol=1e-4)
    assert calls == [1, 1]


def test_a_vae_without_regulation_is_left_alone(bridge, caplog):
    """Forge before e26abf87 and reForge today: first_stage_model.encode takes no regulation."""
    from ldm_patched.ldm.models.autoencoder import AutoencoderKLWithoutRegulation
    from ldm_patched.modules.sd import VAE
    from lib_layerdiffusion.images.img2img import regulation_with_offsets
    p = make_p()
    vae = p.sd_model.forge_objects.vae = VAE(AutoencoderKLWithoutRegulation())
    calls = []
    with caplog.at_level(logging.WARNING):
        bridge.set_vae_regulation(p, regulation_with_offsets(torch.zeros(1, 4, 8, 8), calls))
    assert p.sd_model.forge_objects.vae is vae and "model_vae_regulation" not in vae.patcher.model_options
    assert "takes no encode regulation" in caplog.text
    vae.encode(torch.rand(1, 64, 64, 3))
    assert calls == []


def test_resize_keeps_alpha_with_and_without_force_rgba(bridge, monkeypatch):
    from modules import images
    arr = np.zeros((32, 48, 4), np.uint8)
    arr[8:24, 8:20] = (255, 0, 0, 255)
    image = Image.fromarray(arr, "RGBA")
    with_flag = bridge.resize_image(1, image, 64, 64)
    real = images.resize_image

    def before_e26abf87(resize_mode, im, width, height, upscaler_name=None):  # no force_RGBA: RGB out
        return real(resize_mode, im.convert("RGB"), width, height, upscaler_name)

    monkeypatch.setattr(images, "resize_image", before_e26abf87)
    without_flag = bridge.resize_image(1, image, 64, 64)
    assert with_flag.mode == without_flag.mode == "RGBA" and without_flag.size == (64, 64)
    a, b = np.asarray(with_flag).astype(int), np.asarray(without_flag).astype(int)
    assert np.abs(a[..., 3] - b[..., 3]).max() <= 2 and b[..., 3].max() == 255 and b[..., 3].min() == 0


# --- settings, saving and the API -----------------------------------------------------------------------------

def test_settings_callbacks_and_options_through_the_webui_modules(bridge, tmp_path):
    from lib_layerdiffusion.request.settings import OPTIONS, SECTION
    from modules import images, paths, script_callbacks
    from modules.shared import opts
    bridge.register_settings(OPTIONS, SECTION)
    for callback in script_callbacks.callbacks["ui_settings"]:
        callback()
    assert all(opts.data_labels[o.key].section == SECTION for o in OPTIONS)
    assert opts.data_labels["layerdiffuse_decoder_passes"].component_args == {"choices": [1, 2, 4, 8]}
    opts.data["layerdiffuse_save_preview"] = True
    assert bridge.read_option("layerdiffuse_save_preview", False) is True
    assert bridge.read_option("layerdiffuse_models_folder", "x") == "x"
    assert bridge.default_models_folder() == str(Path(paths.models_path) / "layer_model")
    assert bridge.output_format() == "png" and bridge.vae_encode_is_full()

    seen = []
    bridge.on_image_saving(lambda image, p, filename: filename.replace(".png", "-fg.png"))
    bridge.on_image_saved(lambda image, p, filename: seen.append(filename))
    p = make_p()
    p.outpath_samples, p.seeds, p.save_samples = str(tmp_path), [7], lambda: True
    bridge.save_extra_image(p, Image.new("RGB", (8, 8)), 0, "-preview")
    assert seen and seen[0].endswith("-7-preview-fg.png") and Path(seen[0]).exists()
    p.save_samples = lambda: False
    bridge.save_extra_image(p, Image.new("RGB", (8, 8)), 0, "-preview")
    assert len(seen) == 1
    assert images.save_image  # the fake the bridge saved through

    class Middleware:
        def __init__(self, app):
            self.app = app

    bridge.install_api_middleware(Middleware)
    app = SimpleNamespace(user_middleware=[], middleware_stack="built")
    for callback in script_callbacks.callbacks["app_started"]:
        callback(None, app)
    assert app.user_middleware[0].cls is Middleware and app.middleware_stack is None

    bridge.tell_user(p, "[LayerDiffuse] note")
    assert p.comments == {"[LayerDiffuse] note": 1}


# --- the Forge script on the legacy bridge -------------------------------------------------------------------

@pytest.fixture(scope="module")
def script(env):
    """scripts/layerdiffuse.py loaded in the legacy fake, with its model files in the fake's models folder."""
    from lib_layerdiffusion.networks.attention_sharing import (SD15_ATTENTION_LAYER_NAMES, SD15_CONFIGS,
                                                      AttentionSharingModel, sd15_attention_modules)
    from ldm_patched.modules.model_base import BaseModel
    from modules import paths
    from seeded_weights import seeded_state_dict
    layer = Path(paths.models_path) / "layer_model"
    layer.mkdir(exist_ok=True)
    for name in ("vae_transparent_decoder", "vae_transparent_encoder"):
        save_file(seeded_state_dict(name.removeprefix("vae_")), str(layer / f"{name}.safetensors"))
    save_file(seeded_state_dict("transparent_decoder"), str(layer / "layer_sd15_vae_transparent_decoder.safetensors"))
    save_file({"diffusion_model.out.weight::lora::0": torch.full((8, 2), 0.01),
               "diffusion_model.out.weight::lora::1": torch.full((2, 8), 0.01)},
              str(layer / "layer_xl_transparent_attn.safetensors"))
    save_file({"diffusion_model.input_blocks.0.0.weight::diff::0": torch.zeros(8, 8, 3, 3)},
              str(layer / "layer_xl_fg2ble.safetensors"))
    with torch.device("meta"):
        shapes = AttentionSharingModel(sd15_attention_modules(BaseModel(SD15_ATTENTION_LAYER_NAMES).diffusion_model),
                                       SD15_CONFIGS["sd15_joint"]).expected_shapes()
    gen = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(s, generator=gen) * 0.01 for k, s in shapes.items()},
              str(layer / "layer_sd15_joint.safetensors"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        spec = importlib.util.spec_from_file_location("layerdiffuse_legacy_script", ROOT / "scripts" / "layerdiffuse.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.bridge is env.bridge
        yield module.LayerDiffuseScript()


def script_args(method=ATTN, fg=None, prompts=("", "", "")):
    return (True, method, 1.0, 0.5, fg, None, None, "Crop and Resize", False, *prompts)


def test_script_sdxl_concat_method_through_the_legacy_bridge(script, bridge):
    from modules_forge import forge_sampler
    from modules_forge.forge_sampler import forge_sample_step
    p = make_p(batch_size=2)
    shared = p.sd_model.forge_objects.unet
    args = script_args(FG2BLE, fg=Image.new("RGBA", (40, 30), (255, 0, 0, 255)))
    noise = torch.zeros(2, 4, 8, 8)
    script.process(p, *args)
    script.process_before_every_sampling(p, *args, x=noise, noise=noise)
    unet = p.sd_model.forge_objects.unet
    assert p.sample() == "sampled" and unet is not shared and shared.patches == {}
    assert list(unet.patches) == ["diffusion_model.input_blocks.0.0.weight"]
    assert unet.extra_concat_condition.shape == (2, 4, 8, 8)
    model, cond, _ = forge_sample_step(unet, noise, 100.0, conds(), None)
    assert model is unet.model and cond[0]["model_conds"]["c_concat"].cond.shape == (2, 4, 8, 8)
    _, cond, _ = forge_sample_step(unet, noise, 0.01, conds(), None)  # past the ending step 0.5
    assert "c_concat" not in cond[0]["model_conds"]
    (loaded,) = forge_sampler.prepared  # the weights loaded from there on are the unpatched ones
    assert loaded is not unet and loaded.patches == {} and loaded.extra_concat_condition is None


def test_script_img2img_offsets_through_the_legacy_vae(script, bridge):
    arr = np.zeros((64, 64, 4), np.uint8)
    arr[10:40, 10:40] = (0, 0, 255, 255)
    p = make_p()
    p.init_images, p.resize_mode, p.mask_for_overlay, p.paste_to = [Image.fromarray(arr, "RGBA")], 0, None, None
    shared_vae = p.sd_model.forge_objects.vae
    args = script_args()
    script.process(p, *args)
    script.before_process_init_images(p, {"crop_region": None, "image_mask": None}, *args)
    vae = p.sd_model.forge_objects.vae
    assert vae is not shared_vae and p.init_images[0].mode == "RGB"
    pixels = torch.from_numpy(np.asarray(p.init_images[0], np.float32)[None] / 255)
    assert not torch.allclose(vae.encode(pixels), shared_vae.encode(pixels))
    noise = torch.zeros(1, 4, 8, 8)
    script.process_before_every_sampling(p, *args, x=noise, noise=noise)
    assert p.comments == {}


def test_script_sd15_joint_through_the_legacy_bridge(script, bridge):
    from lib_layerdiffusion.networks.attention_sharing import SD15_ATTENTION_LAYER_NAMES, AttentionSharingUnit
    p = make_p(is_sdxl=False, batch_size=3, attention_names=SD15_ATTENTION_LAYER_NAMES)
    args = script_args(JOINT, prompts=("glass", "", "on a table"))
    noise = torch.zeros(3, 4, 8, 8)
    script.process(p, *args)
    script.process_before_every_sampling(p, *args, x=noise, noise=noise)
    assert p.sample() == "sampled"
    unet = p.sd_model.forge_objects.unet
    assert sorted(unet.object_patches) == sorted("diffusion_model." + n for n in SD15_ATTENTION_LAYER_NAMES)
    assert all(isinstance(u, AttentionSharingUnit) for u in unet.object_patches.values())
    fg, bg, blend = unet.model_options["transformer_options"]["cond_overwrite"]
    assert fg[0, 0, 0].item() == len("glass, a cat") and bg is None
