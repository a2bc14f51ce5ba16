"""Rig-only extension (never shipped): stands in for ADetailer, ReActor and any script that edits the image after
sampling. Two always-on scripts paint a magenta square into the image in postprocess_image, each enabled by its
own checkbox over the API. Their sorting_priority (0 and 100) orders only the UI: the hooks run in extension-folder
order (this folder's before a checkout named after it) unless Forge's setting
prioritized_callbacks_script_postprocess_image says otherwise (tests/rig/adetailer_edits.py uses it):

    "alwayson_scripts": {"LD rig paint square early": {"args": [true]}}   (or "... late")

Each logs the SHA-256 of the image it hands on; tests/rig/pipeline_edits.py checks that LayerDiffuse's transparent
decode read exactly that image (its "[LayerDiffuse] ... decode from pixels ... sha256" log line), whatever the order.
"""
import hashlib
import logging

import numpy as np
from PIL import Image

from modules import scripts

log = logging.getLogger("ld_rig_paint_square")
SQUARE = (16, 16, 48, 48)  # x0, y0, x1, y1
COLOUR = (255, 0, 255)


def painted(image: Image.Image) -> Image.Image:
    image = image.convert("RGB").copy()
    image.paste(COLOUR, SQUARE)
    return image


class _PaintSquare(scripts.Script):
    label = ""

    def title(self):
        return f"LD rig paint square {self.label}"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr
        return [gr.Checkbox(label=self.title(), value=False)]

    def postprocess_image(self, p, pp, enabled=False, *args):
        if not enabled:
            return
        pp.image = painted(pp.image)
        digest = hashlib.sha256(np.ascontiguousarray(np.asarray(pp.image)).tobytes()).hexdigest()
        print(f"[PaintSquare] {self.label} painted image {pp.image.size} sha256 {digest}", flush=True)


class PaintSquareEarly(_PaintSquare):
    sorting_priority = 0
    label = "early"


class PaintSquareLate(_PaintSquare):
    sorting_priority = 100
    label = "late"
