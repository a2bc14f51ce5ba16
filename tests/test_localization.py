"""localizations/zh_CN.json: valid, complete for every string the real UI shows, and without stale keys.

Forge/A1111 localizations are flat JSON objects from the exact (trimmed) English text to its translation; files
of the same name from all extensions are merged, so a key only needs to be present here once.
"""
import ast
import json
import re
import warnings
from pathlib import Path

import gradio as gr
import pytest

from lib_layerdiffusion.images.conditioning_images import RESIZE_MODE_VALUES
from lib_layerdiffusion.request.methods import METHOD_VALUES
from lib_layerdiffusion.request.ui import TITLE, build_ui

ROOT = Path(__file__).resolve().parent.parent
LOCALIZATION = ROOT / "localizations" / "zh_CN.json"
SOURCES = sorted([*(ROOT / "lib_layerdiffusion").rglob("*.py"), *(ROOT / "scripts").glob("*.py")])

# Names that are translated by being kept as they are.
KEPT_AS_IS = {"LayerDiffuse"}

# Settings labels translated ahead of the settings code. They are exempt from the stale-key check only while no
# source file uses them yet (a warning says so); once the settings exist they are checked like every other key.
PENDING_SETTINGS = {
    "Model folder",
    "Download missing model files automatically",
    "Decoder passes (1, 2, 4 or 8; 8 is the reference quality)",
    "Decoder precision on GPU",
    "Save the checkerboard preview",
    "Save a layered OpenRaster (.ora) file",
    "Keep transparency when upscaling",
}

CJK = re.compile(r"[\u3400-\u9fff]")


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    duplicates = {k for k in keys if keys.count(k) > 1}
    assert not duplicates, f"duplicate keys: {duplicates}"
    return dict(pairs)


@pytest.fixture(scope="module")
def zh():
    raw = LOCALIZATION.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf"), "no BOM: the web UI reads the file as plain UTF-8"
    data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    assert isinstance(data, dict)
    return data


def _component_strings(block) -> set[str]:
    """The texts a block shows: label, placeholder, info, choice labels, Markdown/HTML/Button text."""
    found = set()
    for attr in ("label", "placeholder", "info"):
        value = getattr(block, attr, None)
        if isinstance(value, str) and value.strip():
            found.add(value)
    for choice in getattr(block, "choices", None) or []:
        label = choice[0] if isinstance(choice, (tuple, list)) else choice  # gradio 4: (label, value)
        if isinstance(label, str) and label.strip():
            found.add(label)
    if isinstance(block, (gr.Markdown, gr.HTML, gr.Button)) and isinstance(block.value, str) and block.value.strip():
        found.add(block.value)
    return found


@pytest.fixture(scope="module")
def ui_strings():
    found = set()
    for is_img2img in (False, True):
        with gr.Blocks() as demo:
            build_ui(is_img2img)
        for block in demo.blocks.values():
            found |= _component_strings(block)
    return found


def _call_name(node) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _root_call(node):
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call):
        node = node.func.value
    return node


def _const_str(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _source_ui_strings() -> set[str]:
    """Literal UI texts in the sources outside build_ui: settings (OptionInfo labels, .info() texts, section
    titles) and constant label/placeholder/info arguments of gradio components."""
    found = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            texts = []
            if name == "OptionInfo":
                texts.append(node.args[1] if len(node.args) > 1 else None)
            chained_on = node.func.value if isinstance(node.func, ast.Attribute) else None
            if name == "info" and isinstance(chained_on, ast.Call) and _call_name(_root_call(chained_on)) == "OptionInfo":
                texts.extend(node.args[:1])  # shared.OptionInfo(...).info("shown under the label")
            is_gradio = (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
                         and node.func.value.id == "gr")
            for kw in node.keywords:
                if kw.arg in ("label", "placeholder", "info") and (is_gradio or name == "OptionInfo"):
                    texts.append(kw.value)
                if kw.arg == "section" and name == "OptionInfo" and isinstance(kw.value, ast.Tuple):
                    texts.extend(kw.value.elts[1:2])
            found |= {t for t in map(_const_str, texts) if t and t.strip()}
    return found


def test_json_is_valid_utf8_and_well_formed(zh):
    assert zh
    for key, value in zh.items():
        assert isinstance(key, str) and isinstance(value, str)
        assert key == key.strip() and key, f"keys are matched against trimmed text: {key!r}"
        assert value.strip(), f"empty translation for {key!r}"
        if key in KEPT_AS_IS:
            continue
        assert value != key, f"{key!r} is not translated"
        assert CJK.search(value), f"{key!r} -> {value!r} has no Chinese text"


def test_every_ui_string_is_translated(zh, ui_strings):
    expected = {TITLE, "Enabled", "Method", "Weight", "Stop At", "Resize Mode", "Output original mat for img2img",
                "Foreground", "Background", "Blended", "Foreground Additional Prompt",
                "Additional prompt for the blended image."}
    assert expected <= ui_strings  # the walk really reaches every kind of component
    missing = sorted(s for s in ui_strings if not zh.get(s, "").strip())
    assert not missing, f"untranslated UI strings: {missing}"


def test_methods_and_resize_modes_are_translated(zh):
    for value in (*METHOD_VALUES, *RESIZE_MODE_VALUES):
        assert zh.get(value, "").strip(), f"untranslated: {value!r}"
    for value in METHOD_VALUES:
        prefix = value.split(" ", 1)[0]  # "(SD1.5)" / "(SDXL)" stays recognisable
        assert zh[value].startswith(prefix + " ")
        assert re.findall(r"\d+$", value.rstrip(")")) == re.findall(r"\d+$", zh[value].rstrip(")）"))
    assert len({zh[v] for v in METHOD_VALUES}) == len(METHOD_VALUES)
    assert len({zh[v] for v in RESIZE_MODE_VALUES}) == len(RESIZE_MODE_VALUES)


def test_settings_and_other_source_strings_are_translated(zh):
    missing = sorted(s for s in _source_ui_strings() if not zh.get(s, "").strip())
    assert not missing, f"untranslated strings in the sources: {missing}"
    for key in PENDING_SETTINGS:
        assert zh.get(key, "").strip(), key


def test_no_stale_keys(zh, ui_strings):
    source = "\n".join(path.read_text(encoding="utf-8") for path in SOURCES)
    used = ui_strings | set(METHOD_VALUES) | set(RESIZE_MODE_VALUES)
    unused = sorted(key for key in zh if key not in used and key not in source)
    pending = [key for key in unused if key in PENDING_SETTINGS]
    if pending:
        warnings.warn(f"zh_CN.json keys waiting for the settings code: {pending}")
    stale = [key for key in unused if key not in PENDING_SETTINGS]
    assert not stale, f"keys no source file uses any more: {stale}"
