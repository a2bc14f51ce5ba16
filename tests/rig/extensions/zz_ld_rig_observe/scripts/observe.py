"""Rig-only extension (never shipped): watches, without changing anything, what a real post-sampling editor such as
ADetailer hands on. Its folder name sorts last, so its postprocess_image runs after every other extension's (unless
the host's callback priority setting moves one after it: the logged order shows it).

Logs, per request (tests/rig/adetailer_edits.py reads them):
    [Observe] postprocess_image order: name, name, ...     (the host's own ordered callback list for that hook)
    [Observe] image N after postprocess_image (W, H) sha256 <hex>   (the image every earlier hook left)
"""
import hashlib

import numpy as np

from modules import scripts


class LDRigObserve(scripts.Script):
    def title(self):
        return "LD rig observe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def process(self, p, *args):
        if getattr(p, "_ld_rig_observed", False):
            return  # ADetailer calls every script's process again on a copy of p
        p._ld_rig_observed = True
        # modules/scripts.py ScriptRunner.ordered_callbacks: the order Forge runs the hook in (user priority applied)
        names = [c.name for c in p.scripts.ordered_callbacks("postprocess_image")]
        print(f"[Observe] postprocess_image order: {', '.join(names)}", flush=True)

    def postprocess_image(self, p, pp, *args):
        image = pp.image.convert("RGB")
        digest = hashlib.sha256(np.ascontiguousarray(np.asarray(image)).tobytes()).hexdigest()
        index = getattr(p, "batch_index", 0)
        print(f"[Observe] image {index} after postprocess_image {image.size} sha256 {digest}", flush=True)
