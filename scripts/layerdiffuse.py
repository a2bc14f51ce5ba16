"""LayerDiffuse for Forge: the AlwaysVisible script. UI and Forge hooks only; the work is in lib_layerdiffusion."""
from __future__ import annotations

import contextlib
import functools
import logging

from modules import scripts  # modules/scripts.py

from lib_layerdiffusion import generation
from lib_layerdiffusion.request.api_named_args import NamedArgsMiddleware
from lib_layerdiffusion.request.args import ARG_NAMES
from lib_layerdiffusion.errors import LayerDiffuseError, as_user_error
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
bridge.on_image_saved(lambda image, p, filename, infotext: generation.image_saved(p, image, filename, infotext))
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
        # any request, LayerDiffuse on or off: undo a VAE regulation an interrupted or failed request left behind
        bridge.release_vae_regulation(p)
        with _stopping(p, "Preparing the generation", bridge.fail_before_sampling):
            if not generation.requested(p, script_args):
                return  # off: nothing is read, loaded or patched, not even the settings (a bad one cannot stop it)
            settings = Settings.from_values(bridge.read_option)
            gen = generation.begin(p, script_args, bridge, _store(settings), settings)
            if gen is not None:
                setattr(p, generation.STATE_ATTR, gen)

    def before_process_init_images(self, p, pp, *script_args):
        gen = getattr(p, generation.STATE_ATTR, None)
        if gen is None:
            return
        # init runs before p.sample: stop there
        with _stopping(p, "Preparing the init images", bridge.fail_before_sampling):
            generation.prepare_init_images(p, gen, bridge, _store(gen.settings), pp.get("crop_region"))

    def process_before_every_sampling(self, p, *script_args, **kwargs):
        gen = getattr(p, generation.STATE_ATTR, None)
        if gen is None:
            return
        with _stopping(p, "Patching the model", _fail_sampling):
            generation.begin_sampling(p, bridge)
            generation.patch_unet(p, gen, bridge, _store(gen.settings), tuple(kwargs["noise"].shape))

    def post_sample(self, p, ps, *script_args):
        gen = getattr(p, generation.STATE_ATTR, None)
        if gen is None:
            return
        with _stopping(p, "Decoding with the full VAE", bridge.fail_after_sampling):
            # a refiner switch may have put another model in place: record its decodes too, then decode with the
            # full VAE where Forge would use TAESD
            generation.record_decodes_on_current_model(p, gen, bridge)
            generation.decode_with_full_vae(p, gen, bridge, ps)

    def postprocess_image(self, p, pp, *script_args):
        gen = getattr(p, generation.STATE_ATTR, None)
        if gen is None:
            return
        with _stopping(p, "Recording the decoded image", bridge.fail_after_sampling):
            generation.record_pixels(p, gen, bridge, pp)

    def postprocess_image_after_composite(self, p, pp, *script_args):
        gen = getattr(p, generation.STATE_ATTR, None)
        if gen is None:
            return
        with _stopping(p, "Decoding the transparency", bridge.fail_after_sampling):
            generation.finish_image(p, gen, bridge, _store(gen.settings), pp)

    def postprocess(self, p, processed, *script_args):
        # the request is over (every image saved): nothing it built may outlive it
        generation.release(p)


def _fail_sampling(p, error):
    """Sampling has begun: the UNet raises at its first step; if even that cannot be installed (the host's patcher
    is what failed), the request still stops when it is closed."""
    try:
        bridge.fail_sampling(p, error)
    except Exception:  # noqa: BLE001  (the host's own patcher failed: fall back to the WebUI layer)
        log.exception("[LayerDiffuse] Could not stop the sampling at its first step")
        bridge.fail_after_sampling(p, error)


@contextlib.contextmanager
def _stopping(p, stage: str, fail):
    """Any exception in a hook stops the generation with a message (Forge's script runner would log it and go
    on, unpatched or with a stale latent): a LayerDiffuseError as it is, anything else with its traceback in the
    log."""
    try:
        yield
    except Exception as error:  # noqa: BLE001  (every failure must reach the user, not only ours)
        if isinstance(error, LayerDiffuseError):
            log.error("%s", error)
        else:
            log.exception("[LayerDiffuse] %s failed", stage)
        fail(p, as_user_error(error, stage))
