"""Paste-back in a real browser against a real Forge web UI (opt-in).

Run with a Forge started with the web UI and this extension (e.g. the rig's `start_forge.sh --webui --ext .`):
    LAYERDIFFUSE_FORGE_WEBUI_URL=http://127.0.0.1:7861 python -m pytest tests/test_paste_back_browser.py
Needs Debian's chromium and the playwright Python package (its driver only; the browser is /usr/bin/chromium).
A published infotext goes into the txt2img prompt box, the ↙ button reads it, and the accordion shows its values.
"""
import os
import shutil

import pytest

URL = os.environ.get("LAYERDIFFUSE_FORGE_WEBUI_URL")
pytestmark = pytest.mark.skipif(not URL, reason="set LAYERDIFFUSE_FORGE_WEBUI_URL to a Forge web UI with this extension")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# as published with the original extension's first version (no "(SDXL) " prefix in the method name)
PUBLISHED = ("an apple, high quality\nNegative prompt: bad, ugly\nSteps: 20, Sampler: DPM++ 2M SDE Karras, "
             "CFG scale: 5, Seed: 12345, Size: 1024x1024, Model hash: 1c0bd0a2e9, Model: juggernautXL_v6Rundiffusion, "
             "layerdiffusion_enabled: True, layerdiffusion_method: Only Generate Transparent Image (Attention Injection), "
             "layerdiffusion_weight: 1, layerdiffusion_ending_step: 1, layerdiffusion_fg_image: False, "
             "layerdiffusion_bg_image: False, layerdiffusion_blend_image: False, layerdiffusion_resize_mode: Crop and Resize, "
             "Version: f0.0.17v1.8.0rc-latest-269-gef35383b")
CURRENT = ("a glass bottle\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 512x512, "
           "layerdiffusion_enabled: True, layerdiffusion_method: (SDXL) From Background to Blending, "
           "layerdiffusion_weight: 0.75, layerdiffusion_ending_step: 0.5, layerdiffusion_fg_image: False, "
           "layerdiffusion_bg_image: True, layerdiffusion_blend_image: False, layerdiffusion_resize_mode: Just Resize, "
           "layerdiffusion_fg_additional_prompt: , layerdiffusion_bg_additional_prompt: , "
           "layerdiffusion_blend_additional_prompt: ")


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.goto(URL, timeout=300_000)
        page.wait_for_selector("#txt2img_prompt textarea", timeout=300_000)
        yield page
        browser.close()


def paste(page, infotext):
    page.fill("#txt2img_prompt textarea", infotext)
    page.click("#paste")
    page.wait_for_timeout(3000)
    accordion = page.locator("#layerdiffuse_txt2img_accordion")
    if not page.locator("#layerdiffuse_txt2img_enabled input").is_visible():
        accordion.locator(".label-wrap").first.click()
        page.wait_for_timeout(500)


def values(page):
    p = "#layerdiffuse_txt2img_"
    return {
        "enabled": page.locator(p + "enabled input").is_checked(),
        "method": page.locator(p + "method input").input_value(),
        "weight": float(page.locator(p + "weight input[type=number]").input_value()),
        "ending_step": float(page.locator(p + "ending_step input[type=number]").input_value()),
        "resize_mode": page.locator(p + "resize_mode input:checked").get_attribute("value"),
    }


def test_published_first_version_infotext(page):
    paste(page, PUBLISHED)
    got = values(page)
    assert got["enabled"] is True
    assert got["method"] == "(SDXL) Only Generate Transparent Image (Attention Injection)"
    assert got["weight"] == 1.0 and got["ending_step"] == 1.0
    assert page.locator("#txt2img_prompt textarea").input_value() == "an apple, high quality"


def test_current_infotext_sets_every_field(page):
    paste(page, CURRENT)
    got = values(page)
    assert got == {"enabled": True, "method": "(SDXL) From Background to Blending", "weight": 0.75,
                   "ending_step": 0.5, "resize_mode": "Just Resize"}
