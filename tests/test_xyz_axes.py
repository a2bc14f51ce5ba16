"""LayerDiffuse's Method / Weight / Stop At as X/Y/Z plot axes: registered once in the host's plot script (a fake of
scripts/xyz_grid.py, tests/fake_scripts/xyz_grid.py, on each host's fake), each cell's value carried on the cell's
copy of p and read by our script, bad values stopped before the first cell with the API's messages."""
import importlib
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from host_isolation import fake_host_process
from test_forge_script import ATTN, FAKE, ROOT, args, make_p, models_dir, run_sampling_setup  # noqa: F401

from lib_layerdiffusion.errors import InvalidArgumentError
from lib_layerdiffusion.request.args import LayerDiffuseArgs
from lib_layerdiffusion.request.xyz_axes import AXES, OVERRIDE_ATTR, XyzOverride, with_override

CONV = "(SDXL) Only Generate Transparent Image (Conv Injection)"
SD15 = "(SD1.5) Only Generate Transparent Image (Attention Injection)"
LABELS = [axis.label for axis in AXES]
FAKE_XYZ = Path(__file__).parent / "fake_scripts" / "xyz_grid.py"


def load_fake_xyz(scripts_module):
    spec = importlib.util.spec_from_file_location("fake_xyz_loader", FAKE_XYZ)
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    return loader.load(scripts_module)


def count(xyz, label):
    return sum(option.label == label for option in xyz.axis_options)


@pytest.fixture(scope="module")
def forge(models_dir):  # noqa: F811  (the fixture imported above)
    """Forge main's fake with the X/Y/Z plot loaded first (scripts/ loads before extensions), then our script."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(FAKE))
        mp.syspath_prepend(str(ROOT))
        mp.setenv("HF_HUB_OFFLINE", "1")
        import modules.paths
        from modules import script_callbacks, scripts
        mp.setattr(modules.paths, "models_path", str(models_dir))
        mp.setattr(scripts, "scripts_data", [])
        mp.setitem(script_callbacks.callbacks, "before_ui", [])
        xyz = load_fake_xyz(scripts)
        spec = importlib.util.spec_from_file_location("layerdiffuse_xyz_script", ROOT / "scripts" / "layerdiffuse.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        script = module.LayerDiffuseScript()
        yield SimpleNamespace(xyz=xyz, script=script, module=module, scripts=scripts, callbacks=script_callbacks)


def grid_p(forge, script_args):
    """A txt2img processing object as the API makes it for a script run: p.scripts is the runner with our script
    among the always-on ones and its args at args_from:args_to of p.script_args (modules/api/api.py)."""
    p = make_p()
    forge.script.args_from, forge.script.args_to = 2, 2 + len(script_args)
    p.scripts = SimpleNamespace(alwayson_scripts=[forge.script])
    p.script_args = ("other", "script", *script_args)
    return p


def axis_index(plot, label):
    return [option.label for option in plot.current_axis_options].index(label)


def test_axes_are_registered_once_when_the_script_loads(forge):
    for label in LABELS:
        assert count(forge.xyz, label) == 1
    forge.module.bridge.register_xyz_axes(AXES, "LayerDiffuse")  # a second call (e.g. scripts reloaded)
    forge.callbacks.before_ui_callback()
    assert [count(forge.xyz, label) for label in LABELS] == [1, 1, 1]
    plot = forge.xyz.Script()
    assert set(LABELS) <= set(plot.ui(is_img2img=False)) and set(LABELS) <= set(plot.ui(is_img2img=True))
    method_axis = forge.xyz.axis_options[[o.label for o in forge.xyz.axis_options].index(LABELS[0])]
    assert method_axis.type is str and ATTN in method_axis.choices()
    assert [o.type for o in forge.xyz.axis_options if o.label in LABELS[1:]] == [float, float]


def test_axes_wait_for_the_ui_when_the_plot_loads_after_us(forge, monkeypatch):
    monkeypatch.setattr(forge.scripts, "scripts_data", [])
    monkeypatch.setitem(forge.callbacks.callbacks, "before_ui", [])
    forge.module.bridge.register_xyz_axes(AXES, "LayerDiffuse")  # no plot loaded yet: waits
    later = load_fake_xyz(forge.scripts)
    assert [count(later, label) for label in LABELS] == [0, 0, 0]
    forge.callbacks.before_ui_callback()
    forge.callbacks.before_ui_callback()
    assert [count(later, label) for label in LABELS] == [1, 1, 1]


def test_each_cell_generates_with_its_weight_and_stop_at(forge):
    """Weight on X, Stop At on Y: each cell's UNet patch has that cell's strength and the generation that cell's
    Stop At; the request's p is never changed."""
    from lib_layerdiffusion import generation
    plot = forge.xyz.Script()
    plot.ui(is_img2img=False)
    p = grid_p(forge, args(weight=1.0, ending_step=1.0))
    shared_unet = p.sd_model.forge_objects.unet

    def process_images(pc):
        run_sampling_setup(forge.script, pc, pc.script_args[2:])
        (identifier, _), = pc.sd_model.forge_objects.unet.lora_patches.items()
        gen = getattr(pc, generation.STATE_ATTR)
        pc.sd_model.forge_objects.unet = shared_unet  # Forge rebuilds forge_objects per batch
        return identifier[1], gen.args.weight, gen.args.ending_step, dict(pc.extra_generation_params)

    cells = plot.run(p, axis_index(plot, "[LayerDiffuse] Weight"), "0.25, 1.5", None,
                     axis_index(plot, "[LayerDiffuse] Stop At"), "0.5, 1", None, process_images)
    assert {k: v[:3] for k, v in cells.items()} == {
        (0, 0): (0.25, 0.25, 0.5), (1, 0): (1.5, 1.5, 0.5), (0, 1): (0.25, 0.25, 1.0), (1, 1): (1.5, 1.5, 1.0)}
    assert cells[(1, 0)][3]["layerdiffusion_weight"] == 1.5
    assert not hasattr(p, OVERRIDE_ATTR) and not hasattr(p, generation.STATE_ATTR)


def test_method_axis_from_the_dropdown_reaches_the_script(forge):
    from lib_layerdiffusion import generation
    plot = forge.xyz.Script()
    plot.ui(is_img2img=False)
    p = grid_p(forge, args(method=ATTN, weight=0.5))

    def process_images(pc):
        forge.script.process(pc, *pc.script_args[2:])
        gen = getattr(pc, generation.STATE_ATTR)
        return gen.args.method.value, gen.args.weight

    cells = plot.run(p, axis_index(plot, "[LayerDiffuse] Method"), "", [CONV, ATTN.lower()],
                     axis_index(plot, "Nothing"), "", None, process_images)
    assert cells == {(0, 0): (CONV, 0.5), (1, 0): (ATTN, 0.5)}


def test_a_method_of_another_family_fails_its_cell_with_our_message(forge):
    """Each cell is checked like a request: an SD1.5 method on an SDXL checkpoint stops that cell's sampling with
    the checkpoint message (the plot shows the error and leaves the cell empty); the other cell generates."""
    from lib_layerdiffusion.errors import UnsupportedModelError
    plot = forge.xyz.Script()
    plot.ui(is_img2img=False)
    p = grid_p(forge, args())

    def process_images(pc):
        forge.script.process(pc, *pc.script_args[2:])
        return pc.sample()

    cells = plot.run(p, axis_index(plot, "[LayerDiffuse] Method"), "", [SD15, ATTN],
                     axis_index(plot, "Nothing"), "", None, process_images)
    assert isinstance(cells[(0, 0)], UnsupportedModelError) and "needs an SD1.5 checkpoint" in str(cells[(0, 0)])
    assert cells[(1, 0)] == "sampled"


@pytest.mark.parametrize("label, values, csv_mode, field, bad", [
    ("[LayerDiffuse] Method", "", False, "method", "(SDXL) Attention"),
    ("[LayerDiffuse] Method", "(SDXL) Attention", True, "method", "(SDXL) Attention"),
    ("[LayerDiffuse] Weight", "0.5, 2.5", False, "weight", 2.5),
    ("[LayerDiffuse] Stop At", "1.2", False, "ending_step", 1.2),
])
def test_a_bad_axis_value_stops_the_plot_before_any_cell_with_the_api_message(forge, label, values, csv_mode,
                                                                             field, bad):
    plot = forge.xyz.Script()
    plot.ui(is_img2img=False)
    cells = []
    with pytest.raises(InvalidArgumentError) as raised:
        plot.run(grid_p(forge, args()), axis_index(plot, label), values, [ATTN, "(SDXL) Attention"],
                 axis_index(plot, "Nothing"), "", None, cells.append, csv_mode=csv_mode)
    assert cells == []
    with pytest.raises(InvalidArgumentError) as api:
        LayerDiffuseArgs.from_named({"enabled": True, field: bad})
    assert str(raised.value) == str(api.value) and str(raised.value).startswith("[LayerDiffuse] ")


def test_an_axis_while_layerdiffuse_is_off_stops_the_plot(forge):
    plot = forge.xyz.Script()
    plot.ui(is_img2img=False)
    with pytest.raises(InvalidArgumentError, match="LayerDiffuse is not enabled: tick Enable LayerDiffuse"):
        plot.run(grid_p(forge, args(enabled=False)), axis_index(plot, "[LayerDiffuse] Weight"), "0.5, 1", None,
                 axis_index(plot, "Nothing"), "", None, lambda pc: None)


def test_an_override_on_a_disabled_request_fails_the_generation(forge):
    """Where the confirm step could not see our args (no runner on p), the cell's own generation stops."""
    p = make_p()
    AXES[1].apply(p, 0.5)
    forge.script.process(p, *args(enabled=False))
    with pytest.raises(InvalidArgumentError, match=r"LayerDiffuse axes \(\[LayerDiffuse\] Weight\)"):
        p.sample()


def test_override_is_one_typed_value_applied_in_one_place():
    p = SimpleNamespace()
    request = LayerDiffuseArgs.from_named({"enabled": True, "weight": 0.8})
    assert with_override(p, request) is request
    AXES[0].apply(p, CONV.upper())
    AXES[2].apply(p, "0.25")
    override = getattr(p, OVERRIDE_ATTR)
    assert isinstance(override, XyzOverride) and override.method.value == CONV and override.ending_step == 0.25
    combined = with_override(p, request)
    assert (combined.method.value, combined.weight, combined.ending_step) == (CONV, 0.8, 0.25)
    with pytest.raises(Exception):
        override.weight = 1.0  # frozen


# --- the same registration on the other hosts' fakes -------------------------------------------------------------

HOST_BOUND = ("lib_layerdiffusion.hosts.forge_neo", "lib_layerdiffusion.hosts.forge_backend",
              "lib_layerdiffusion.hosts.forge_legacy", "lib_layerdiffusion.hosts.webui")


@pytest.mark.parametrize("fake, variant, bridge_name", [
    ("fake_forge_neo", None, "forge_neo"),
    ("fake_forge_legacy", "previous", "forge_legacy"),
    ("fake_forge_legacy", "reforge", "forge_legacy"),
])
def test_each_host_registers_the_axes_once(fake, variant, bridge_name):
    with fake_host_process(Path(__file__).parent / fake, HOST_BOUND) as hosts:
        if variant:
            import fake_host
            fake_host.VARIANT = variant
        from modules import script_callbacks, scripts
        assert hosts.bridge_name() == bridge_name
        bridge = importlib.import_module(f"lib_layerdiffusion.hosts.{bridge_name}")
        bridge.register_xyz_axes(AXES, "LayerDiffuse")  # before the plot is loaded: waits for the UI
        xyz = load_fake_xyz(scripts)
        bridge.register_xyz_axes(AXES, "LayerDiffuse")
        script_callbacks.before_ui_callback()
        assert [count(xyz, label) for label in LABELS] == [1, 1, 1]
        assert "lib_layerdiffusion.hosts.webui" in sys.modules


def test_a_layer_methods_caption_does_not_leak_into_the_next_cell(forge, models_dir):  # noqa: F811
    """The plot's cells share p.extra_generation_params (copy(p) is shallow): fg→blend names its layer per image,
    the attention cell after it must not."""
    from lib_layerdiffusion.generation import LAYER_INFOTEXT_KEY
    from PIL import Image
    plot = forge.xyz.Script()
    plot.ui(is_img2img=False)
    fg = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    p = grid_p(forge, (True, ATTN, 1.0, 1.0, fg, None, None, "Crop and Resize", False, "", "", ""))

    def process_images(pc):
        forge.script.process(pc, *pc.script_args[2:])
        return LAYER_INFOTEXT_KEY in pc.extra_generation_params

    cells = plot.run(p, axis_index(plot, "[LayerDiffuse] Method"), "", ["(SDXL) From Foreground to Blending", ATTN],
                     axis_index(plot, "Nothing"), "", None, process_images)
    assert cells == {(0, 0): True, (1, 0): False}
