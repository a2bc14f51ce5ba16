"""Extras tab (single image, batch, and the API's extra-single-image / extra-batch-images): upscaling an RGBA
PNG keeps its transparency. Thin: the work is in lib_layerdiffusion.images.alpha_upscale.

Forge (modules/scripts_postprocessing.py ScriptPostprocessingRunner.run) calls every script's process_firstpass,
then every script's process, in `order`. This one comes after the upscalers: in process_firstpass it takes the
alpha off (so any upscaler gets RGB), in process it puts the alpha back at the final size.
"""
from modules import scripts_postprocessing, shared  # modules/scripts_postprocessing.py, modules/shared.py

from lib_layerdiffusion.images.alpha_upscale import restore_alpha, split_alpha

_ALPHA = "_layerdiffuse_alpha"


class LayerDiffuseKeepAlpha(scripts_postprocessing.ScriptPostprocessing):
    name = "LayerDiffuse: keep transparency"
    order = 100000  # after every built-in operation (upscale is 1000)

    def ui(self):
        return {}

    def process_firstpass(self, pp: scripts_postprocessing.PostprocessedImage, **kwargs):
        if not shared.opts.data.get("layerdiffuse_keep_alpha_upscaling", True):
            return
        pp.image, alpha = split_alpha(pp.image)
        setattr(pp, _ALPHA, alpha)

    def process(self, pp: scripts_postprocessing.PostprocessedImage, **kwargs):
        alpha = getattr(pp, _ALPHA, None)
        if alpha is not None:
            pp.image = restore_alpha(pp.image, alpha)
