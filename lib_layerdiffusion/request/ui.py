"""The LayerDiffuse accordion, built from Gradio components only (no Forge import), so it can be tested alone.

The returned component list is the positional argument contract of the script (see args.ARG_NAMES).
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .args import ARG_NAMES
from ..images.conditioning_images import DEFAULT_RESIZE_MODE, RESIZE_MODE_VALUES
from .methods import DEFAULT_METHOD, LAYER_LABELS, METHOD_VALUES, Layer, method_by_name

TITLE = "LayerDiffuse"


@dataclass(frozen=True)
class Visibility:
    """Which optional inputs a method shows."""
    images: dict[Layer, bool]
    resize_mode: bool
    prompts: dict[Layer, bool]
    output_origin: bool


def visibility(method_value: str, is_img2img: bool) -> Visibility:
    try:
        method = method_by_name(method_value)
    except Exception:  # an unknown value (e.g. from a stale UI state) shows nothing optional
        return Visibility({l: False for l in Layer}, False, {l: False for l in Layer}, False)
    return Visibility(
        images={layer: layer in method.inputs for layer in Layer},
        resize_mode=bool(method.inputs),
        prompts={layer: layer in method.prompts for layer in Layer},
        output_origin=is_img2img and method.makes_transparent,
    )


@dataclass(frozen=True)
class LayerDiffuseUI:
    components: tuple  # in ARG_NAMES order
    image_columns: dict  # Layer -> gr.Column


def build_ui(is_img2img: bool, elem_prefix: str = "layerdiffuse") -> LayerDiffuseUI:
    tab = "img2img" if is_img2img else "txt2img"

    def eid(name: str) -> str:
        return f"{elem_prefix}_{tab}_{name}"

    start = visibility(DEFAULT_METHOD.value, is_img2img)
    with gr.Accordion(label=TITLE, open=False, elem_id=eid("accordion")):
        enabled = gr.Checkbox(label="Enabled", value=False, elem_id=eid("enabled"))
        method = gr.Dropdown(label="Method", choices=list(METHOD_VALUES), value=DEFAULT_METHOD.value,
                             type="value", elem_id=eid("method"))
        columns, images = {}, {}
        with gr.Row():
            for layer in Layer:
                label = LAYER_LABELS[layer].capitalize()
                with gr.Column(visible=start.images[layer]) as column:
                    images[layer] = gr.Image(label=label, type="pil", image_mode="RGBA",
                                             sources=["upload", "clipboard"], height=300,
                                             elem_id=eid(f"{layer.value}_image"))
                columns[layer] = column
        with gr.Row():
            weight = gr.Slider(label="Weight", value=1.0, minimum=0.0, maximum=2.0, step=0.001,
                               elem_id=eid("weight"))
            ending_step = gr.Slider(label="Stop At", value=1.0, minimum=0.0, maximum=1.0, step=0.01,
                                    elem_id=eid("ending_step"))
        prompts = {
            layer: gr.Textbox(label=f"{LAYER_LABELS[layer].capitalize()} Additional Prompt",
                              placeholder=f"Additional prompt for the {LAYER_LABELS[layer]} image.",
                              visible=start.prompts[layer], elem_id=eid(f"{layer.value}_additional_prompt"))
            for layer in Layer
        }
        resize_mode = gr.Radio(label="Resize Mode", choices=list(RESIZE_MODE_VALUES),
                               value=DEFAULT_RESIZE_MODE.value, type="value", visible=start.resize_mode,
                               elem_id=eid("resize_mode"))
        output_origin = gr.Checkbox(label="Output original mat for img2img", value=False,
                                    visible=start.output_origin, elem_id=eid("output_origin"))

    def on_method_change(value):
        v = visibility(value, is_img2img)
        updates = [gr.update(visible=v.images[layer]) for layer in Layer]
        updates.append(gr.update(visible=v.resize_mode))
        # a hidden prompt is cleared so it cannot silently change the next generation
        updates += [gr.update(visible=v.prompts[layer]) if v.prompts[layer] else gr.update(visible=False, value="")
                    for layer in Layer]
        updates.append(gr.update(visible=v.output_origin))
        return updates

    method.change(on_method_change, inputs=[method],
                  outputs=[*(columns[l] for l in Layer), resize_mode, *(prompts[l] for l in Layer), output_origin],
                  show_progress=False, queue=False)

    by_name = dict(enabled=enabled, method=method, weight=weight, ending_step=ending_step,
                   fg_image=images[Layer.FOREGROUND], bg_image=images[Layer.BACKGROUND],
                   blend_image=images[Layer.BLEND], resize_mode=resize_mode, output_origin=output_origin,
                   fg_additional_prompt=prompts[Layer.FOREGROUND], bg_additional_prompt=prompts[Layer.BACKGROUND],
                   blend_additional_prompt=prompts[Layer.BLEND])
    return LayerDiffuseUI(components=tuple(by_name[name] for name in ARG_NAMES), image_columns=columns)
