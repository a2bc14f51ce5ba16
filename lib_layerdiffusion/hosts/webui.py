"""The WebUI layer both Forge generations share (`modules/`: processing, scripts, options, callbacks, images,
the API app), so both bridges serve it from one place. Nothing here touches the diffusion backend.
"""
from __future__ import annotations

import logging
import os

from modules import paths  # modules/paths.py: models_path honours --models-dir

from ..errors import LayerDiffuseError
from ..request.methods import BaseModel

log = logging.getLogger(__name__)


def default_models_folder() -> str:
    """models/layer_model under modules/paths.py models_path (which honours --models-dir): where the original
    extension put its downloads."""
    return os.path.join(paths.models_path, "layer_model")


def base_model(sd_model) -> BaseModel | None:
    """The WebUI model flags is_sdxl / is_sd1 (set by backend/diffusion_engine/{sdxl,sd15}.py in the current
    generation, by modules/sd_models.py in the older one). The SDXL refiner also says is_sdxl (Forge main and Neo
    backend/diffusion_engine/sdxl.py StableDiffusionXLRefiner), but no LayerDiffuse file fits it."""
    if getattr(sd_model, "is_sdxl_refiner", False) or type(sd_model).__name__.endswith("Refiner"):
        return None
    if type(sd_model).__name__ == "Flux":  # backend/diffusion_engine/flux.py (Forge main and Neo): no flag
        return BaseModel.FLUX
    if getattr(sd_model, "is_sdxl", False):
        return BaseModel.SDXL
    if getattr(sd_model, "is_sd1", False):
        return BaseModel.SD15
    return None


def image_index(p, pp, hook: str) -> int:
    """The index in the whole generation of the image the postprocess hook `hook` got. modules/scripts.py
    PostprocessImageArgs carries it from A1111 1.9 on; old Forge (`previous`, A1111 1.8) and reForge build it
    without, calling each hook once per image of the batch in order (modules/processing.py
    process_images_inner), so there each hook's calls are counted per batch."""
    index = getattr(pp, "index", None)
    if index is not None:
        return int(index)
    iteration = int(getattr(p, "iteration", 0) or 0)
    counts = getattr(p, "layerdiffuse_postprocess_counts", None)
    if counts is None:
        counts = {}
        setattr(p, "layerdiffuse_postprocess_counts", counts)
    position = counts.get((hook, iteration), 0)
    counts[(hook, iteration)] = position + 1
    return iteration * int(p.batch_size) + position


def infotext_takes_callables() -> bool:
    """Whether a callable in p.extra_generation_params is called per image (modules/processing.py
    create_infotext, A1111 1.9+) and left out of Processed.js(). A1111 1.8 (old Forge `previous`) writes its repr
    into the infotext and its API answers HTTP 500 (json.dumps without default=)."""
    import inspect
    from modules import processing
    try:
        return "callable(" in inspect.getsource(processing.create_infotext)
    except (OSError, TypeError):
        return False


def has_init_images_hook() -> bool:
    """modules/scripts.py ScriptRunner.before_process_init_images (A1111 1.10; not in old Forge `previous`):
    the hook where img2img transparency is set up."""
    from modules import scripts
    return hasattr(scripts.ScriptRunner, "before_process_init_images")


def fail_before_sampling(p, error: LayerDiffuseError) -> None:
    """Stop this generation with `error` before anything is sampled.

    Forge's ScriptRunner (modules/scripts.py) catches every exception a script hook raises and carries on, which
    would give the user a plain image as if all were fine. `p.sample` (modules/processing.py process_images_inner)
    is called outside those guards, so this request's own `sample` raises the error instead: the UI shows the
    message and the API answers with it (modules/api/api.py handle_exception reads status_code and detail).
    """
    def sample(*args, **kwargs):
        raise error

    p.sample = sample


def fail_after_sampling(p, error: LayerDiffuseError) -> None:
    """Stop this generation with `error` once an image was sampled but could not be made transparent.

    After sampling every hook is guarded by the script runner, so the error is raised from the two calls of the
    request that are not: a later batch's `p.sample`, and `p.close()`, which both the API
    (modules/api/api.py text2imgapi / img2imgapi: `with closing(p)`) and the UI (modules/txt2img.py, img2img.py:
    `with closing(p)`) make when processing ends. The UI shows the message, the API answers with it; files saved
    before the failure stay on disk, the user is told why they are opaque."""
    fail_before_sampling(p, error)
    if getattr(p, "layerdiffuse_close_raises", None) is not None:
        return  # already failing: keep the first error
    p.comment(error.detail)  # also in the result's notes, where a caller never closes this p (X/Y/Z plot cells)
    close = p.close

    def close_then_raise():
        close()
        raise error

    p.layerdiffuse_close_raises = error
    p.close = close_then_raise


def vae_decode_is_full() -> bool:
    """modules/shared opts.sd_vae_decode_method: with 'TAESD' (or an approximation) Forge's final decode
    (modules/sd_samplers_common.py samples_to_images_tensor) never calls the checkpoint's VAE."""
    from modules.shared import opts
    return getattr(opts, "sd_vae_decode_method", "Full") == "Full"


def decode_with_full_vae(p, samples):
    """The sampled latents decoded by the checkpoint's own VAE whatever 'VAE type for decode' says
    (modules/sd_samplers_common.py samples_to_images_tensor with approximation 0 → sd_model.decode_first_stage),
    as the list Forge takes as already decoded (modules/processing.py DecodedSamples: process_images_inner then
    skips its own decode)."""
    from modules import processing, sd_samplers_common
    decoded = processing.DecodedSamples()
    for image in sd_samplers_common.samples_to_images_tensor(samples, 0, p.sd_model):
        decoded.append(image.cpu())
    return decoded


def tell_user(p, message: str) -> None:
    """A note shown under the results in the UI and returned in the API's info (StableDiffusionProcessing.comment),
    and logged."""
    log.warning("%s", message)
    p.comment(message)


def vae_encode_is_full() -> bool:
    """modules/shared opts.sd_vae_encode_method: 'Full' uses the real VAE (which takes a regulation); 'TAESD'
    does not."""
    from modules.shared import opts
    return getattr(opts, "sd_vae_encode_method", "Full") == "Full"


def output_format() -> str:
    """modules/shared.py opts.samples_format: the file format Forge saves images in."""
    from modules.shared import opts
    return str(opts.samples_format).lower()


def stealth_infotext_mode() -> str:
    """modules/stealth_infotext.py add_stealth_pnginfo (called by modules/images.py save_image when
    opts.enable_pnginfo): "Alpha" writes the infotext into the alpha channel, "RGB" into the colour (and fails on
    RGBA images), "None" does nothing. Forge versions without it read as "None"."""
    from modules.shared import opts
    if not getattr(opts, "enable_pnginfo", True):
        return "None"
    # Forge main names the option stealth_pnginfo_option; reForge stealth_pnginfo_opt (modules/shared_options.py
    # :403, default "None")
    for key in ("stealth_pnginfo_option", "stealth_pnginfo_opt"):
        if key in opts.data:
            return str(opts.data[key])
    return "Alpha" if _has_stealth_infotext() else "None"


def _has_stealth_infotext() -> bool:
    """Whether this Forge has modules/stealth_infotext.py at all."""
    import importlib.util
    return importlib.util.find_spec("modules.stealth_infotext") is not None


def register_settings(options, section) -> None:
    """Add LayerDiffuse's section to the Settings tab (modules/script_callbacks.py on_ui_settings,
    modules/shared.py opts.add_option / OptionInfo)."""
    import gradio as gr
    from modules import script_callbacks, shared

    def add_options():
        for option in options:
            if option.choices:
                info = shared.OptionInfo(option.default, option.label, gr.Radio,
                                         {"choices": list(option.choices)}, section=section)
            else:
                info = shared.OptionInfo(option.default, option.label, section=section)
            shared.opts.add_option(option.key, info)

    script_callbacks.on_ui_settings(add_options)


def read_option(key: str, default):
    """modules/shared.py opts: the saved value, or the default before the Settings tab ever saved one."""
    from modules.shared import opts
    return opts.data.get(key, default)


def on_image_saving(callback) -> None:
    """modules/script_callbacks.py on_before_image_saved: callback(image, p, filename) may return a new
    filename (modules/images.py save_image then saves there)."""
    from modules import script_callbacks

    def before_saved(params):
        new_name = callback(params.image, params.p, params.filename)
        if new_name:
            params.filename = new_name

    script_callbacks.on_before_image_saved(before_saved)


def on_image_saved(callback) -> None:
    """modules/script_callbacks.py on_image_saved: callback(image, p, filename, infotext) after the file is
    written; infotext is what modules/images.py save_image put in params.pnginfo["parameters"] (None if none)."""
    from modules import script_callbacks

    def saved(params):
        callback(params.image, params.p, params.filename, (getattr(params, "pnginfo", None) or {}).get("parameters"))

    script_callbacks.on_image_saved(saved)


def save_extra_image(p, image, index: int, suffix: str, even_if_grid_only: bool = False) -> None:
    """Save an additional image of this generation next to the others (modules/images.py save_image), if this
    generation saves its images at all (StableDiffusionProcessing.save_samples).
    even_if_grid_only: also when the user turned off "Always save all generated images" (opts.samples_save),
    so that only grids would be saved; never when the request asked not to save (API save_images=false,
    p.do_not_save_samples)."""
    from modules import images
    from modules.shared import opts
    grid_only = not opts.samples_save and not getattr(p, "do_not_save_samples", False)
    if not (p.save_samples() or (even_if_grid_only and grid_only)):
        return
    position = index % len(p.seeds) if getattr(p, "seeds", None) else 0
    images.save_image(image, p.outpath_samples, "", p.seeds[position], p.prompts[position], opts.samples_format,
                      p=p, suffix=suffix)


def install_api_middleware(middleware_class) -> None:
    """Put an ASGI middleware in front of Forge's API when the app starts (modules/script_callbacks.py
    on_app_started; added to app.user_middleware as modules/initialize_util.py setup_middleware does, and the
    stack rebuilt on the next request)."""
    from modules import script_callbacks
    from starlette.middleware import Middleware

    def add(_demo, app):
        app.user_middleware.insert(0, Middleware(middleware_class))
        app.middleware_stack = None  # starlette builds the stack again, with this middleware, on the next request

    script_callbacks.on_app_started(add)


def _accepts(function, parameter: str) -> bool:
    import inspect
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def resize_image(mode: int, image, width: int, height: int):
    """modules/images.py resize_image keeping the alpha channel. Its force_RGBA argument exists from Forge
    e26abf87 on (and in Neo and reForge); old Forge lacks it, so there colour and alpha are resized apart, the
    same way, and joined again."""
    from modules import images
    rgba = image.convert("RGBA")
    if _accepts(images.resize_image, "force_RGBA"):
        return images.resize_image(mode, rgba, width, height, force_RGBA=True)
    colour = images.resize_image(mode, rgba.convert("RGB"), width, height).convert("RGBA")
    alpha = images.resize_image(mode, rgba.getchannel("A").convert("RGB"), width, height)
    colour.putalpha(alpha.convert("L"))
    return colour


# --- X/Y/Z plot axes (scripts/xyz_grid.py) ---------------------------------------------------------------------
# Every Forge of the rig has the same AxisOption(label, type, apply, format_value, confirm, cost, choices, prepare)
# (Forge main dfdcbab6 scripts/xyz_grid.py:237, Neo 6e1e0d5 :262, reForge 3b56b268 :215, old Forge bfee03d8 :207),
# builds its axis dropdown from the module's axis_options when its ui() runs (:444 / :481 / :474 / :415), calls
# confirm(p, values) before the first cell and apply(cell_p, value, values) on each cell's copy of p.

XYZ_SCRIPT_FILE = "xyz_grid.py"


def _xyz_grid_module():
    """The loaded X/Y/Z plot script module: modules/scripts.py scripts_data holds (script_class, path, basedir,
    module) for every loaded script file (modules/script_loading.py load_module names the module after the file,
    as sd_forge_controlnet/scripts/xyz_grid_support.py find_module relies on). None before it is loaded."""
    from modules import scripts
    for data in scripts.scripts_data:
        module = getattr(data, "module", None)
        if os.path.basename(str(data.path)) == XYZ_SCRIPT_FILE and hasattr(module, "AxisOption") \
                and isinstance(getattr(module, "axis_options", None), list):
            return module
    return None


def _script_args_of(p, title: str) -> tuple | None:
    """The slice of p.script_args that belongs to the always-on script titled `title` (modules/scripts.py
    ScriptRunner.alwayson_scripts, Script.args_from / args_to), or None where the request has none."""
    runner = getattr(p, "scripts", None)
    for script in getattr(runner, "alwayson_scripts", None) or []:
        try:
            matches = script.title().casefold() == title.casefold()
        except Exception:  # noqa: BLE001  (another extension's title() is not ours to trust)
            matches = False
        if matches and script.args_from is not None and getattr(p, "script_args", None) is not None:
            return tuple(p.script_args[script.args_from:script.args_to])
    return None


def _add_xyz_axes(axes, title: str) -> bool:
    """Append the axes the loaded X/Y/Z plot lacks (by label, so a second call adds nothing). False when no X/Y/Z
    plot script is loaded (yet)."""
    module = _xyz_grid_module()
    if module is None:
        return False
    present = {getattr(option, "label", None) for option in module.axis_options}
    for axis in axes:
        if axis.label in present:
            continue
        choices = (lambda values=axis.choices: list(values)) if axis.choices else None
        module.axis_options.append(module.AxisOption(
            axis.label, axis.value_type, lambda p, x, xs, axis=axis: axis.apply(p, x),
            confirm=lambda p, xs, axis=axis: axis.confirm(xs, _script_args_of(p, title)), choices=choices))
    log.info("[LayerDiffuse] X/Y/Z plot axes: %s", ", ".join(axis.label for axis in axes))
    return True


def register_xyz_axes(axes, title: str) -> None:
    """Give the host's X/Y/Z plot our axes (`axes`: request/xyz_axes.py XyzAxis; `title`: our script's title,
    to find our args for the confirm step). Now, when the plot script is already loaded (scripts/ loads before
    extensions, and with --nowebui the API builds the script UIs right after loading, before any callback); else
    before the UI is built (modules/script_callbacks.py on_before_ui)."""
    from modules import script_callbacks
    if _add_xyz_axes(axes, title):
        return

    def before_ui():
        if not _add_xyz_axes(axes, title):
            log.info("[LayerDiffuse] No X/Y/Z plot script loaded: no LayerDiffuse axes.")

    script_callbacks.on_before_ui(before_ui)
