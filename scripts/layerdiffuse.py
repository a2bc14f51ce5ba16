"""LayerDiffuse for Forge: the AlwaysVisible script. UI and Forge hooks only; the work is in lib_layerdiffusion."""
from __future__ import annotations

import functools
import logging

from modules import scripts  # modules/scripts.py

from lib_layerdiffusion import generation
from lib_layerdiffusion.request.api_named_args import NamedArgsMiddleware
from lib_layerdiffusion.request.args import ARG_NAMES
from lib_layerdiffusion.errors import LayerDiffuseError
from lib_layerdiffusion.hosts import load_bridge
from lib_layerdiffusion.request.infotext import paste_readers
from lib_layerdiffusion.networks.model_store import ModelStore
from lib_layerdiffusion.request.settings import OPTIONS, SECTION, Settings
from lib_layerdiffusion.request.ui import TITLE, build_ui
from lib_layerdiffusion.request.xyz_axes import AXES as XYZ_AXES

log = logging.getLogger("lib_layerdiffusion")
bridge = load_bridge()
bridge.register_settings(OPTIONS, SECTION)
bridge.on_image_saving(lambda image, p, filename: generation.before_save(p, image, filename))
bridge.on_image_saved(lambda image, p, filename: generation.image_saved(p, image, filename))
bridge.install_api_middleware(NamedArgsMiddleware)
bridge.register_xyz_axes(XYZ_AXES, TITLE)


# fields restored by paste-back; images are never in the infotext
PASTED = ("enabled", "method", "weight", "ending_step", "resize_mode", "fg_additional_prompt",
          "bg_additional_prompt", "blend_additional_prompt")


@functools.lru_cache(maxsize=4)
def _store_for(folder: str, allow_download: bool) -> ModelStore:
    return ModelStore(folder, allow_download=allow_download)


def _store(settings: Settings) -> ModelStore:
    return _store_for(settings.models_folder or bridge.default_models_folder(), settings.allow_download)


class LayerDiffuseScript(scripts.Script):
    sorting_priority = 15

    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        built = build_ui(is_img2img)
        readers = paste_readers()
        by_name = dict(zip(ARG_NAMES, built.components))
        self.infotext_fields = [(by_name[name], readers[name]) for name in PASTED]
        self.paste_field_names = []
        return list(built.components)

    def process(self, p, *script_args):
        try:
            settings = Settings.from_values(bridge.read_option)
            gen = generation.begin(p, script_args, bridge, _store(settings), settings)
        except LayerDiffuseError as error:
            log.error("%s", error)
            bridge.fail_before_sampling(p, error)
            return
        if gen is not None:
            setattr(p, generation.STATE_ATTR, gen)

    def before_process_init_images(self, p, pp, *script_args):
        gen = getattr(p, generation.STATE_ATTR, None)
        if gen is None:
            return
        try:
            generation.prepare_init_images(p, gen, bridge, _store(gen.settings), pp.get("crop_region"))
        except LayerDiffuseError as error:
            log.error("%s", error)
            bridge.fail_before_sampling(p, error)  # init runs before p.sample: stop there

    def process_before_every_sampling(self, p, *script_args, **kwargs):
        gen = getattr(p, generation.STATE_ATTR, None)
        if gen is None:
            return
        generation.check_init_offsets_applied(p, bridge)
        try:
            generation.patch_unet(p, gen, bridge, _store(gen.settings), tuple(kwargs["noise"].shape))
        except LayerDiffuseError as error:
            log.error("%s", error)
            bridge.fail_sampling(p, error)

    def post_sample(self, p, ps, *script_args):
        gen = getattr(p, generation.STATE_ATTR, None)
        if gen is None:
            return
        generation.record_decodes_on_current_model(p, gen, bridge)

    def postprocess_image(self, p, pp, *script_args):
        gen = getattr(p, generation.STATE_ATTR, None)
        if gen is None:
            return
        generation.record_pixels(p, gen, bridge, pp)

    def postprocess_image_after_composite(self, p, pp, *script_args):
        gen = getattr(p, generation.STATE_ATTR, None)
        if gen is None:
            return
        generation.finish_image(p, gen, bridge, _store(gen.settings), pp)
