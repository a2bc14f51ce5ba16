"""The accordion from real Gradio components: order, defaults, and which inputs each method shows."""
import gradio as gr
import pytest

from lib_layerdiffusion.request.args import ARG_NAMES, LayerDiffuseArgs
from lib_layerdiffusion.request.methods import METHODS, Layer
from lib_layerdiffusion.request.ui import build_ui, visibility


@pytest.fixture(scope="module", params=[False, True], ids=["txt2img", "img2img"])
def built(request):
    with gr.Blocks() as demo:
        ui = build_ui(request.param)
    return demo, ui, request.param


def test_component_order_and_defaults(built):
    _, ui, _ = built
    kinds = [type(c).__name__ for c in ui.components]
    assert kinds == ["Checkbox", "Dropdown", "Slider", "Slider", "Image", "Image", "Image", "Radio", "Checkbox",
                     "Textbox", "Textbox", "Textbox"]
    assert len(ui.components) == len(ARG_NAMES)
    values = [c.value for c in ui.components]
    # the UI defaults parse as a disabled request, and enabled they make the default method
    assert LayerDiffuseArgs.from_script_args(*values) == LayerDiffuseArgs()
    enabled = LayerDiffuseArgs.from_script_args(True, *values[1:])
    assert enabled.method.value == "(SDXL) Only Generate Transparent Image (Attention Injection)"
    weight, stop_at = ui.components[2], ui.components[3]
    assert (weight.minimum, weight.maximum, weight.step, weight.value) == (0.0, 2.0, 0.001, 1.0)
    assert (stop_at.minimum, stop_at.maximum, stop_at.value) == (0.0, 1.0, 1.0)
    for image in ui.components[4:7]:
        assert image.image_mode == "RGBA" and image.type == "pil"


def test_method_change_updates_visibility(built):
    demo, ui, is_img2img = built
    method = ui.components[1]
    deps = [d for d in demo.config["dependencies"] if method._id in [t[0] for t in d["targets"]]]
    assert len(deps) == 1
    fn = demo.fns[demo.config["dependencies"].index(deps[0])].fn
    for m in METHODS:
        updates = fn(m.value)
        shown = [u.get("visible") for u in updates]
        assert shown[:3] == [layer in m.inputs for layer in Layer]
        assert shown[3] == bool(m.inputs)
        assert shown[4:7] == [layer in m.prompts for layer in Layer]
        assert shown[7] == (is_img2img and m.makes_transparent)
        for layer, update in zip(Layer, updates[4:7]):
            if layer not in m.prompts:
                assert update.get("value") == ""  # hidden prompts are cleared


def test_visibility_examples():
    v = visibility("(SDXL) From Background and Blending to Foreground", False)
    assert v.images == {Layer.FOREGROUND: False, Layer.BACKGROUND: True, Layer.BLEND: True}
    v = visibility("(SD1.5) From Foreground to Background (need batch size 2)", False)
    assert v.images[Layer.FOREGROUND] and v.prompts == {Layer.FOREGROUND: False, Layer.BACKGROUND: True,
                                                         Layer.BLEND: True}
    assert not any(visibility("garbage", True).images.values())
