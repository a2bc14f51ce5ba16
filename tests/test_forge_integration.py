"""End-to-end checks against a REAL running Forge with this extension loaded (opt-in).

Skipped unless LAYERDIFFUSE_FORGE_URL is set, e.g.

    LAYERDIFFUSE_FORGE_URL=http://127.0.0.1:7861 \
    LAYERDIFFUSE_FORGE_OUTPUTS=~/.cache/layerdiffuse-rig/data/main/outputs \
    python -m pytest -v -s tests/test_forge_integration.py

LAYERDIFFUSE_FORGE_OUTPUTS (optional) is that Forge's outputs folder, for the saved-file check (skipped when
unset). LAYERDIFFUSE_FORGE_TIMEOUT (optional) is the per-request timeout in seconds (default 900).

The Forge must have the checkpoints `rig_sdxl_base_random` (SDXL) and `rig_sd15_random` (SD1.5) and the
LayerDiffuse files in models/layer_model: the acceptance rig (random weights) provides them; see the rig README.
The images are noise with random weights: what is checked is that every path runs in the real Forge and that
the results have the right form (count, modes, sizes, non-trivial alpha, infotext), that the image condition
takes effect for every image of a batch, that errors come back as HTTP errors with a [LayerDiffuse] message
and leave nothing behind, and that a disabled extension changes nothing.
Each SDXL request takes about 1-2 minutes on the rig's 2-core CPU; the whole suite about 40 minutes.

Standard library + numpy + Pillow only; the HTTP helper is tests/forge_api.py.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

try:  # tests/ as a package (tests/__init__.py) or as a plain folder on sys.path
    from tests.forge_api import ForgeClient, b64_to_bytes, decode_png, error_messages, newest_png, png_b64
except ImportError:  # pragma: no cover - depends on how pytest was invoked
    from forge_api import ForgeClient, b64_to_bytes, decode_png, error_messages, newest_png, png_b64

FORGE_URL = os.environ.get("LAYERDIFFUSE_FORGE_URL", "").strip()
FORGE_OUTPUTS = os.path.expanduser(os.environ.get("LAYERDIFFUSE_FORGE_OUTPUTS", "").strip())
TIMEOUT_S = float(os.environ.get("LAYERDIFFUSE_FORGE_TIMEOUT", "900") or 900)

pytestmark = pytest.mark.skipif(
    not FORGE_URL, reason="needs a running Forge with LayerDiffuse: set LAYERDIFFUSE_FORGE_URL (opt-in)")

SDXL = "rig_sdxl_base_random"
SD15 = "rig_sd15_random"

ATTN = "(SDXL) Only Generate Transparent Image (Attention Injection)"
CONV = "(SDXL) Only Generate Transparent Image (Conv Injection)"
FG2BLE = "(SDXL) From Foreground to Blending"
FGBLE2BG = "(SDXL) From Foreground and Blending to Background"
BG2BLE = "(SDXL) From Background to Blending"
BGBLE2FG = "(SDXL) From Background and Blending to Foreground"

# method -> (input images it needs, whether its result is a transparent RGBA image)
SDXL_METHODS = {
    ATTN: ((), True),
    CONV: ((), True),
    FG2BLE: (("fg",), False),
    FGBLE2BG: (("fg", "blend"), False),
    BG2BLE: (("bg",), False),
    BGBLE2FG: (("bg", "blend"), True),
}

SIZE = 256


def log(message: str) -> None:
    print(f"[forge] {message}", flush=True)


# --- test images (distinct, with alpha) ----------------------------------------------------------------------

def fg_image(size: int = SIZE) -> Image.Image:
    """A red disc with a soft edge on a fully transparent background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(xx - size * 0.5, yy - size * 0.55)
    alpha = np.clip((size * 0.32 - r) / 6.0, 0.0, 1.0)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0] = 220
    rgba[..., 1] = (40 + 60 * (yy / size)).astype(np.uint8)
    rgba[..., 2] = 30
    rgba[..., 3] = (alpha * 255).round().astype(np.uint8)
    rgba[alpha == 0, :3] = 0
    return Image.fromarray(rgba)


def bg_image(size: int = SIZE) -> Image.Image:
    """An opaque diagonal colour gradient."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    rgba = np.empty((size, size, 4), np.uint8)
    rgba[..., 0] = (255 * xx).astype(np.uint8)
    rgba[..., 1] = (255 * yy).astype(np.uint8)
    rgba[..., 2] = (255 * (1 - xx) * 0.6 + 60).astype(np.uint8)
    rgba[..., 3] = 255
    return Image.fromarray(rgba)


def blend_image(size: int = SIZE) -> Image.Image:
    """A blue-ish image with a light stripe and a half-transparent corner."""
    img = Image.new("RGBA", (size, size), (30, 70, 190, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, size // 3, size, size // 3 + size // 8], fill=(150, 190, 250, 255))
    draw.rectangle([0, 0, size // 4, size // 4], fill=(30, 70, 190, 128))
    return img


def transparent_image(size: int = SIZE) -> Image.Image:
    return Image.new("RGBA", (size, size), (0, 0, 0, 0))


def input_images(needed) -> dict:
    # fg and bg as plain base64, blend as a data URL: both forms are part of the API
    made = {"fg": png_b64(fg_image()), "bg": png_b64(bg_image()), "blend": png_b64(blend_image(), data_url=True)}
    return {name: made[name] for name in needed}


# --- requests --------------------------------------------------------------------------------------------------

def base_payload(size=(SIZE, SIZE), batch=1, steps=2, save=False) -> dict:
    width, height = size
    return {
        "prompt": "a glass bottle, transparent background",
        "negative_prompt": "",
        "width": width,
        "height": height,
        "steps": steps,
        "sampler_name": "Euler",
        "cfg_scale": 5,
        "seed": 12345,
        "batch_size": batch,
        "n_iter": 1,
        "send_images": True,
        "save_images": save,
    }


def ld_args(method, fg=None, bg=None, blend=None, weight=1.0, ending_step=1.0, enabled=True) -> list:
    """All twelve positional arguments, in the order of the extension's ui()."""
    return [enabled, method, weight, ending_step, fg, bg, blend, "Crop and Resize", False, "", "", ""]


def with_ld(payload: dict, args: list) -> dict:
    payload = dict(payload)
    payload["alwayson_scripts"] = {"LayerDiffuse": {"args": args}}
    return payload


_results: dict = {}  # successful responses by request, so a request two tests need runs once


def generate(forge: ForgeClient, payload: dict, checkpoint: str = SDXL, reuse: bool = True):
    key = (checkpoint, json.dumps(payload, sort_keys=True))
    if reuse and key in _results:
        return _results[key]
    forge.select_checkpoint(checkpoint)
    result = forge.txt2img(payload)
    _results[key] = result
    return result


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a).astype(np.float64) - pixels(b).astype(np.float64)).mean())


def describe(images) -> str:
    parts = []
    for im in images:
        s = f"{im.mode} {im.width}x{im.height}"
        if im.mode == "RGBA":
            alpha = pixels(im)[..., 3].astype(np.float64)
            s += f" alpha mean {alpha.mean():.1f} std {alpha.std():.1f}"
        parts.append(s)
    return "; ".join(parts)


def check_transparent(image: Image.Image, what: str) -> None:
    assert image.mode == "RGBA", f"{what}: expected RGBA, got {image.mode}"
    alpha = pixels(image)[..., 3].astype(np.float64)
    assert alpha.std() > 1.0, f"{what}: alpha is trivial (mean {alpha.mean():.2f}, std {alpha.std():.2f})"


def check_error(response, expected_status: int, needle: str) -> str:
    messages = error_messages(response)
    assert response.status == expected_status, \
        f"expected HTTP {expected_status}, got {response.status}: {response.text()}"
    ours = [m for m in messages if m.startswith("[LayerDiffuse]")]
    assert ours, f"no message starting with [LayerDiffuse] in the error body: {response.text()}"
    assert any(needle in m for m in ours), f"no [LayerDiffuse] message contains {needle!r}: {ours}"
    return ours[0]


# --- fixtures --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def forge() -> ForgeClient:
    client = ForgeClient(FORGE_URL, timeout_s=TIMEOUT_S)
    try:
        titles = client.checkpoint_titles()
    except OSError as error:  # opted in, so an unreachable Forge is a failure, not a skip
        pytest.fail(f"Forge at {FORGE_URL} does not answer: {error}")
    for name in (SDXL, SD15):
        assert any(t == name or t.startswith(name) for t in titles), f"checkpoint {name} not in Forge: {titles}"
    scripts = client.script_titles()
    assert "layerdiffuse" in [t.lower() for t in scripts.get("txt2img", [])], \
        f"the LayerDiffuse script is not loaded in this Forge: {scripts}"
    return client


@pytest.fixture(scope="module")
def attn_baseline(forge):
    """Attention injection, batch 1, all twelve positional arguments: the reference image several tests
    compare against (same seed, so the same image is expected)."""
    result = generate(forge, with_ld(base_payload(), ld_args(ATTN)))
    images = result.images()
    log(f"attn baseline (batch 1): {result.elapsed_s:.1f}s, {describe(images)}")
    return images


# --- 7. disabled changes nothing ---------------------------------------------------------------------------------

def test_disabled_is_identical_to_no_script(forge):
    plain = generate(forge, base_payload())
    disabled = generate(forge, with_ld(base_payload(), [False]))
    a, b = plain.images(), disabled.images()
    log(f"plain: {plain.elapsed_s:.1f}s, {describe(a)}; disabled [false]: {disabled.elapsed_s:.1f}s, {describe(b)}")
    assert len(a) == len(b) == 1
    assert a[0].mode == "RGB" and a[0].size == (SIZE, SIZE)
    assert np.array_equal(pixels(a[0]), pixels(b[0])), \
        f"disabled differs from no script: mean abs diff {mean_abs_diff(a[0], b[0]):.4f}"
    log(f"disabled vs plain: pixels identical, PNG bytes identical: {plain.png_bytes[0] == disabled.png_bytes[0]}")
    assert "layerdiffusion_" not in (disabled.infotexts or [""])[0]


# --- 5. argument forms ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["named_dict", "short_list"])
def test_argument_forms(forge, attn_baseline, form):
    if form == "named_dict":
        args = [{"enabled": True, "method": ATTN}]
    else:
        args = [True, ATTN]
    result = generate(forge, with_ld(base_payload(), args))
    images = result.images()
    log(f"attn {form}: {result.elapsed_s:.1f}s, {describe(images)}")
    assert len(images) == 2, describe(images)
    check_transparent(images[0], f"attn {form} image 0")
    assert images[1].mode == "RGB"
    assert f"layerdiffusion_method: {ATTN}" in result.infotexts[0]
    diff = mean_abs_diff(images[0], attn_baseline[0])
    log(f"attn {form} vs full positional list: mean abs diff {diff:.4f}")
    assert np.array_equal(pixels(images[0]), pixels(attn_baseline[0])), \
        f"{form} gives another image than the full positional list (mean abs diff {diff:.4f})"


# --- 2. saved file ---------------------------------------------------------------------------------------------------

def test_saved_png_is_the_returned_rgba(forge, attn_baseline):
    if not FORGE_OUTPUTS:
        pytest.skip("set LAYERDIFFUSE_FORGE_OUTPUTS to the Forge outputs folder for the saved-file check")
    started = time.time()
    result = generate(forge, with_ld(base_payload(save=True), ld_args(ATTN)), reuse=False)
    images = result.images()
    log(f"attn save_images=true: {result.elapsed_s:.1f}s, {describe(images)}")
    assert images[0].mode == "RGBA", describe(images)
    path = newest_png(FORGE_OUTPUTS)
    assert path is not None, f"no PNG saved under {FORGE_OUTPUTS}/txt2img-images"
    assert os.stat(path).st_mtime >= started - 2, f"newest PNG {path} is older than this request"
    saved = Image.open(path)
    saved.load()
    log(f"saved {path}: {saved.mode} {saved.size}")
    assert saved.mode == "RGBA", f"saved {path} is {saved.mode}, not RGBA"
    assert saved.size == images[0].size
    assert np.array_equal(pixels(saved), pixels(images[0])), \
        f"saved PNG differs from the returned one: mean abs diff {mean_abs_diff(saved, images[0]):.4f}"
    with open(path, "rb") as f:
        same_bytes = f.read() == result.png_bytes[0]
    log(f"saved == returned: pixels identical, file bytes identical: {same_bytes}; "
        f"'parameters' chunk: {'layerdiffusion_method' in saved.info.get('parameters', '')}")
    assert "layerdiffusion_method" in saved.info.get("parameters", ""), "saved PNG has no LayerDiffuse infotext"
    # saving must not change the image: Forge's "Stealth infotext" (on by default, mode "Alpha") writes the
    # infotext into the alpha channel of the image being saved (modules/stealth_infotext.py add_data:
    # putalpha(255), then one bit per pixel), which would wipe the transparency of what is saved AND returned
    check_transparent(saved, f"saved {path}")
    diff = mean_abs_diff(images[0], attn_baseline[0])
    log(f"returned with save_images=true vs without: mean abs diff {diff:.4f}")
    assert np.array_equal(pixels(images[0]), pixels(attn_baseline[0])), \
        f"save_images=true changed the returned image (mean abs diff {diff:.4f})"


# --- 6. errors, and nothing left behind ----------------------------------------------------------------------------

ERROR_CASES = {
    "unknown_method": (SDXL, lambda: ld_args("(SDXL) No Such Method"), 422, "[LayerDiffuse] Unknown method"),
    "fg2ble_without_fg": (SDXL, lambda: ld_args(FG2BLE), 422, "needs a foreground image"),
    "weight_not_a_number": (SDXL, lambda: ld_args(ATTN, weight="abc"), 422, "weight"),
    "sdxl_method_on_sd15": (SD15, lambda: ld_args(ATTN), 422, "needs an SDXL checkpoint"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_then_good_request(forge, attn_baseline, case):
    checkpoint, make_args, status, needle = ERROR_CASES[case]
    forge.select_checkpoint(checkpoint)
    response = forge.txt2img_raw(with_ld(base_payload(), make_args()))
    message = check_error(response, status, needle)
    log(f"{case}: HTTP {response.status} after {response.elapsed_s:.1f}s: {message[:160]}")
    # the next good request works and gives the image it gave before: nothing patched was left behind
    result = generate(forge, with_ld(base_payload(), ld_args(ATTN)), checkpoint=SDXL, reuse=False)
    images = result.images()
    diff = mean_abs_diff(images[0], attn_baseline[0])
    log(f"{case}: good request after it: {result.elapsed_s:.1f}s, {describe(images[:1])}, "
        f"mean abs diff to baseline {diff:.4f}")
    check_transparent(images[0], "good request after the error")
    assert np.array_equal(pixels(images[0]), pixels(attn_baseline[0])), \
        f"after the {case} error the same request gives another image (mean abs diff {diff:.4f})"


# --- 1. every SDXL method, batch 2 ---------------------------------------------------------------------------------

def method_payload(method: str, batch: int = 2, size=(SIZE, SIZE), fg=None) -> dict:
    needed, _ = SDXL_METHODS[method]
    imgs = input_images(needed)
    if fg is not None:
        imgs["fg"] = fg
    return with_ld(base_payload(size=size, batch=batch), ld_args(method, **imgs))


@pytest.mark.parametrize("method", list(SDXL_METHODS))
def test_every_sdxl_method_batch_2(forge, method):
    _, transparent = SDXL_METHODS[method]
    result = generate(forge, method_payload(method))
    images = result.images()
    log(f"{method} batch 2: {result.elapsed_s:.1f}s, {describe(images)}")
    for im in images:
        assert im.size == (SIZE, SIZE), describe(images)
    if transparent:
        assert len(images) == 4, f"expected 2 RGBA + 2 previews: {describe(images)}"
        for i in (0, 1):
            check_transparent(images[i], f"{method} image {i}")
        for i in (2, 3):
            assert images[i].mode == "RGB", f"preview {i} is {images[i].mode}"
    else:
        assert len(images) == 2, f"expected 2 opaque images: {describe(images)}"
        for i, im in enumerate(images):
            assert im.mode == "RGB", f"{method} image {i} is {im.mode}, expected opaque RGB"
    assert len(result.infotexts) >= 2
    for text in result.infotexts[:2]:
        assert f"layerdiffusion_method: {method}" in text, text


# --- 4. the condition reaches every image of the batch ---------------------------------------------------------------

def test_fg_condition_changes_every_image_of_the_batch(forge):
    with_fg = generate(forge, method_payload(FG2BLE))  # the same request as in the batch-2 test above
    empty_fg = generate(forge, method_payload(FG2BLE, fg=png_b64(transparent_image())))
    a, b = with_fg.images(), empty_fg.images()
    assert len(a) == len(b) == 2
    diffs = [mean_abs_diff(a[i], b[i]) for i in range(2)]
    changed = [float((pixels(a[i]) != pixels(b[i])).any(axis=-1).mean()) for i in range(2)]
    log(f"fg2ble batch 2, red-disc fg vs transparent fg ({empty_fg.elapsed_s:.1f}s): mean abs diff per image "
        f"{diffs[0]:.3f}, {diffs[1]:.3f}; changed pixels {changed[0]:.1%}, {changed[1]:.1%}")
    # Generation is deterministic (the same request gives the same pixels: see the tests above), so a condition
    # that does not reach an image leaves it exactly unchanged (the original extension dropped it for batch > 1).
    # The size of the change depends on the weights: with the rig's random weights (concat-channel weights
    # N(0, 0.001^2) in a bf16 UNet) it is ~0.02/255 on ~5% of the pixels, hence the low bars.
    for i in range(2):
        assert diffs[i] > 0.005 and changed[i] > 0.01, \
            f"image {i} of the batch does not change with the foreground " \
            f"(mean abs diff {diffs[i]:.4f}, changed pixels {changed[i]:.2%})"


# --- 3. a size that is not a multiple of 64 --------------------------------------------------------------------------

@pytest.mark.parametrize("method", [ATTN, FG2BLE])
def test_large_odd_size(forge, method):
    size = (1000, 744)
    _, transparent = SDXL_METHODS[method]
    result = generate(forge, method_payload(method, batch=1, size=size))
    images = result.images()
    log(f"{method} 1000x744: {result.elapsed_s:.1f}s, {describe(images)}")
    assert all(im.size == size for im in images), describe(images)
    if transparent:
        assert len(images) == 2, describe(images)
        check_transparent(images[0], f"{method} 1000x744")
        assert images[1].mode == "RGB"
    else:
        assert len(images) == 1 and images[0].mode == "RGB", describe(images)
    assert f"layerdiffusion_method: {method}" in result.infotexts[0]


# --- SD1.5 methods (issue: SD1.5 methods) -------------------------------------------------------------------------

SD15_FG2BG = "(SD1.5) From Foreground to Background (need batch size 2)"
SD15_BG2FG = "(SD1.5) From Background to Foreground (need batch size 2)"
SD15_JOINT = "(SD1.5) Generate Everything Together (need batch size 3)"


def sd15_payload(method, batch, fg=None, bg=None, prompts=("", "", "")):
    args = [True, method, 1.0, 1.0, fg, bg, None, "Crop and Resize", False, *prompts]
    return with_ld(base_payload(batch=batch, steps=2), args)


@pytest.mark.parametrize("method, batch, images_given, modes", [
    (SD15_FG2BG, 2, {"fg": True}, ["RGB", "RGB"]),
    (SD15_BG2FG, 2, {"bg": True}, ["RGBA", "RGB", "RGB"]),
    (SD15_JOINT, 6, {}, ["RGBA", "RGB", "RGB", "RGBA", "RGB", "RGB", "RGB", "RGB"]),
], ids=["fg2bg", "bg2fg", "joint_batch6"])
def test_sd15_methods(forge, method, batch, images_given, modes):
    fg = png_b64(fg_image()) if images_given.get("fg") else None
    bg = png_b64(bg_image()) if images_given.get("bg") else None
    result = generate(forge, sd15_payload(method, batch, fg=fg, bg=bg, prompts=("glass", "table", "")),
                      checkpoint=SD15)
    images = result.images()
    log(f"{method} batch {batch}: {result.elapsed_s:.1f}s, {describe(images)}")
    assert [im.mode for im in images] == modes
    for i, image in enumerate(images):
        if image.mode == "RGBA":
            check_transparent(image, f"{method} image {i}")
    assert f"layerdiffusion_method: {method}" in result.info["infotexts"][0]


def test_sd15_wrong_batch_size(forge):
    forge.select_checkpoint(SD15)
    r = forge.txt2img_raw(sd15_payload(SD15_JOINT, 4))
    check_error(r, 422, "set Batch size to a multiple of 3")


# --- transparent img2img (issue: transparent img2img) ---------------------------------------------------------------

def hard_edge_shape(size: int = SIZE) -> Image.Image:
    """An opaque orange square with a hard edge on a fully transparent background."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill=(240, 140, 40, 255))
    return img


def img2img(forge, init_images, batch=1, denoise=0.3):
    payload = base_payload(batch=batch, steps=4)
    payload.update({"init_images": [png_b64(im) for im in init_images], "denoising_strength": denoise})
    payload = with_ld(payload, [True, ATTN])
    forge.select_checkpoint(SDXL)
    r = forge.post("/sdapi/v1/img2img", payload)
    assert r.ok, f"img2img answered HTTP {r.status}: {r.text()}"
    return [decode_png(b64_to_bytes(b)) for b in r.json["images"]], r.elapsed_s


def alpha_iou(result: Image.Image, reference: Image.Image) -> float:
    a = pixels(result)[..., 3] > 127
    b = pixels(reference.resize(result.size))[..., 3] > 127
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def alpha_correlation(result: Image.Image, reference: Image.Image) -> float:
    a = pixels(result)[..., 3].astype(np.float64).ravel()
    b = pixels(reference.resize(result.size))[..., 3].astype(np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1]) if a.std() and b.std() else 0.0


def test_img2img_offset_reaches_the_latent(forge):
    """With the rig's random weights the decoder's alpha means nothing, so "alpha follows the input" can only
    be measured with the published weights; what this proves is that the input's alpha reaches the sampling
    (the result differs from the same picture given without alpha), and it reports the alpha agreement."""
    shape = hard_edge_shape()
    with_alpha, t1 = img2img(forge, [shape])
    opaque = Image.new("RGBA", shape.size, (128, 128, 128, 255))
    opaque.alpha_composite(shape)
    without, t2 = img2img(forge, [opaque.convert("RGB")])
    diff = mean_abs_diff(with_alpha[0].convert("RGB"), without[0].convert("RGB"))
    log(f"img2img denoise 0.3 ({t1:.0f}s / {t2:.0f}s): alpha IoU with the input: {alpha_iou(with_alpha[0], shape):.3f} "
        f"with its alpha, {alpha_iou(without[0], shape):.3f} without; correlation "
        f"{alpha_correlation(with_alpha[0], shape):.4f} / {alpha_correlation(without[0], shape):.4f}; "
        f"colour mean abs diff between the two {diff:.4f}")
    assert with_alpha[0].mode == "RGBA" and without[0].mode == "RGBA"
    assert diff > 0, "the input's alpha did not change the result: the offset never reached the latent"


def test_img2img_batch_of_two_inputs_gets_two_offsets(forge):
    a = hard_edge_shape()
    b = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    ImageDraw.Draw(b).ellipse([10, 10, SIZE // 2, SIZE - 10], fill=(40, 200, 90, 255))
    images, elapsed = img2img(forge, [a, b], batch=2)
    rgba = [im for im in images if im.mode == "RGBA"]
    assert len(rgba) == 2
    log(f"img2img batch of two inputs ({elapsed:.0f}s): alpha correlation of output 1 with inputs a/b "
        f"{alpha_correlation(rgba[0], a):.4f}/{alpha_correlation(rgba[0], b):.4f}, output 2 "
        f"{alpha_correlation(rgba[1], a):.4f}/{alpha_correlation(rgba[1], b):.4f}")
    assert not np.array_equal(pixels(rgba[0]), pixels(rgba[1]))


# --- layered .psd beside the PNGs; sprite-ready output ----------------------------------------------------------

def _set_options(forge, values: dict) -> dict:
    """POST /sdapi/v1/options; returns the previous values (for restoring)."""
    current = forge.get("/sdapi/v1/options")
    assert current.ok, current.text()
    from lib_layerdiffusion.request.settings import OPTIONS
    defaults = {option.key: option.default for option in OPTIONS}
    # an option never saved is absent from the answer: restore its default, not None
    previous = {key: defaults.get(key) if current.json.get(key) is None else current.json[key] for key in values}
    response = forge.post("/sdapi/v1/options", values)
    assert response.ok, response.text()
    return previous


def _saved_files() -> set:
    found = set()
    for folder, _, files in os.walk(os.path.join(FORGE_OUTPUTS, "txt2img-images")):
        found |= {os.path.join(folder, f) for f in files}
    return found


def _new_files(before: set, suffix: str) -> list:
    return sorted(f for f in _saved_files() - before if f.endswith(suffix))


@pytest.mark.parametrize("method, checkpoint, needed, batch, expected", [
    (FG2BLE, SDXL, ("fg",), 1, [("blended", False), ("foreground", True)]),
    (SD15_JOINT, SD15, (), 3, [("blended", False), ("background", True), ("foreground", True)]),
], ids=["sdxl_fg2ble", "sd15_joint"])
def test_layered_psd_file_beside_the_pngs(forge, method, checkpoint, needed, batch, expected):
    psd_tools = pytest.importorskip("psd_tools")
    if not FORGE_OUTPUTS:
        pytest.skip("set LAYERDIFFUSE_FORGE_OUTPUTS to the Forge outputs folder for the saved-file check")
    previous = _set_options(forge, {"layerdiffuse_save_psd_file": True})
    try:
        before = _saved_files()
        args = ld_args(method, **{name: png_b64(fg_image()) for name in needed})
        result = generate(forge, with_ld(base_payload(batch=batch, save=True), args), checkpoint=checkpoint,
                          reuse=False)
    finally:
        _set_options(forge, previous)
    images = result.images()
    log(f"{method} batch {batch} with the .psd setting: {result.elapsed_s:.1f}s, {describe(images)}")
    psds, pngs = _new_files(before, ".psd"), _new_files(before, ".png")
    log(f"saved: {[os.path.basename(p) for p in psds + pngs]}")
    assert len(psds) == 1, psds
    stem = os.path.splitext(psds[0])[0]
    by_layer = {os.path.splitext(p)[0][len(stem) + 1:]: p for p in pngs if p.startswith(stem + "-")}
    document = psd_tools.PSDImage.open(psds[0])
    layers = list(document)
    log(f"{os.path.basename(psds[0])}: {document.size}, layers {[(l.name, l.visible) for l in layers]}")
    assert document.size == (SIZE, SIZE)
    assert [(l.name, l.visible) for l in layers] == expected
    frames = {"blended": "blend", "background": "bg", "foreground": "fg"}
    for layer in layers:
        got = np.asarray(layer.topil().convert("RGBA"))
        if frames[layer.name] in by_layer:  # a generated layer: the saved PNG's pixels
            saved = Image.open(by_layer[frames[layer.name]])
            want = np.asarray(saved.convert("RGBA")).copy()
            if layer.name != "foreground":
                # an opaque frame: Forge's stealth infotext (Alpha mode) saved it as RGBA with the infotext in
                # the alpha's lowest bits; the layer is the opaque image
                want[..., 3] = 255
        else:  # the input image the method was given
            want = np.asarray(fg_image())
        visible = want[..., 3] > 0
        assert np.abs(got[..., 3].astype(int) - want[..., 3]).max() <= 1, layer.name
        assert np.abs(got[visible].astype(int) - want[visible].astype(int)).max(initial=0) <= 1, layer.name
        log(f"layer {layer.name}: pixels equal to {os.path.basename(by_layer.get(frames[layer.name], 'the input'))}")
    infotext = result.info["infotexts"][0]
    from lib_layerdiffusion.images.psd_file import read_psd_infotext
    assert read_psd_infotext(psds[0]) == infotext


def test_trim_and_bleed_saved_equals_returned(forge):
    if not FORGE_OUTPUTS:
        pytest.skip("set LAYERDIFFUSE_FORGE_OUTPUTS to the Forge outputs folder for the saved-file check")
    previous = _set_options(forge, {"layerdiffuse_trim_margins": True, "layerdiffuse_trim_margin": 4,
                                    "layerdiffuse_bleed_colour": True})
    try:
        before = _saved_files()
        result = generate(forge, with_ld(base_payload(save=True), ld_args(ATTN)), reuse=False)
    finally:
        _set_options(forge, previous)
    image, preview = result.images()  # the RGBA, then its checkerboard preview
    infotext = result.info["infotexts"][0]
    import re
    from lib_layerdiffusion.images.sprite import TrimBox
    match = re.search(r'layerdiffusion_trim: "?([0-9,]+ of [0-9]+x[0-9]+)', infotext)
    log(f"trim+bleed: {result.elapsed_s:.1f}s, {describe([image])}, trim {match and match.group(1)}")
    assert match, infotext
    box = TrimBox.parse(match.group(1))
    assert (box.width, box.height) == (SIZE, SIZE) and image.size == (box.x1 - box.x0, box.y1 - box.y0)
    (png,) = _new_files(before, ".png")
    saved = Image.open(png)
    assert np.array_equal(np.asarray(saved), np.asarray(image))
    assert match.group(1) in saved.info.get("parameters", "")
    assert preview.mode == "RGB" and preview.size == image.size
    alpha = np.asarray(image)[..., 3]
    if (alpha == 0).any() and (alpha > 0).any():  # bled: invisible pixels carry visible colours
        rgb = np.asarray(image)[..., :3].reshape(-1, 3)
        visible_colours = {tuple(c) for c in rgb[alpha.reshape(-1) > 0]}
        assert all(tuple(c) in visible_colours for c in rgb[alpha.reshape(-1) == 0][:500])
