"""The command-line client (lib_layerdiffusion/client.py) against a fake Forge API on a local port."""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

try:  # tests/ as a package (tests/__init__.py) or as a plain folder on sys.path
    from tests.fake_forge_api import LAYERDIFFUSE_422, FakeForge, png_bytes
except ImportError:
    from fake_forge_api import LAYERDIFFUSE_422, FakeForge, png_bytes

ROOT = Path(__file__).resolve().parent.parent
CLIENT_PATH = ROOT / "lib_layerdiffusion" / "client.py"


def _load_client():
    # by path: the client is standard library only and must not need the package (whose __init__ imports torch)
    spec = importlib.util.spec_from_file_location("layerdiffuse_client_under_test", CLIENT_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


client = _load_client()
OPAQUE_METHOD = "(SDXL) From Foreground to Blending"


@pytest.fixture
def forge():
    with FakeForge(slow_s=1.5) as fake:
        yield fake


def run(capsys, *argv):
    code = client.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def pngs(folder: Path) -> list:
    return sorted(p.name for p in folder.glob("*.png"))


def write_prompts(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def script_args(request: dict) -> dict:
    args = request["alwayson_scripts"]["LayerDiffuse"]["args"]
    assert isinstance(args, list) and len(args) == 1
    return args[0]


def test_three_prompts_with_previews(forge, tmp_path, capsys):
    prompts = write_prompts(tmp_path, "# a comment", "a glass bottle", "", "a red apple, high quality",
                            "Ünïcode cat")
    out = tmp_path / "out"
    code, err = run(capsys, "--url", forge.url, "--prompts", prompts, "--out", out, "--preview", "--seed", 42,
                    "--steps", 12, "--sampler", "DPM++ 2M", "--cfg-scale", 5.5, "--negative-prompt", "blurry",
                    "--weight", 0.8, "--stop-at", 0.5, "--width", 896, "--height", 1152)
    assert code == 0, err
    assert pngs(out) == [
        "0001-a-glass-bottle-42-preview.png", "0001-a-glass-bottle-42.png",
        "0002-a-red-apple-high-quality-42-preview.png", "0002-a-red-apple-high-quality-42.png",
        "0003-unicode-cat-42-preview.png", "0003-unicode-cat-42.png",
    ]
    for name in pngs(out):
        with Image.open(out / name) as im:
            assert im.mode == ("RGB" if name.endswith("-preview.png") else "RGBA")
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]
    assert forge.prompts == ["a glass bottle", "a red apple, high quality", "Ünïcode cat"]
    req = forge.requests[0]
    assert {k: req[k] for k in ("negative_prompt", "width", "height", "steps", "seed", "sampler_name", "cfg_scale",
                                "batch_size")} == {
        "negative_prompt": "blurry", "width": 896, "height": 1152, "steps": 12, "seed": 42,
        "sampler_name": "DPM++ 2M", "cfg_scale": 5.5, "batch_size": 1}
    assert script_args(req) == {"enabled": True, "weight": 0.8, "ending_step": 0.5,
                                "method": "(SDXL) Only Generate Transparent Image (Attention Injection)"}
    assert f"[1/3] wrote {out / '0001-a-glass-bottle-42.png'} (" in err
    assert "[3/3] wrote" in err


def test_defaults_and_no_previews_without_flag(forge, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(capsys, "--url", forge.url + "/", "--prompt", "SHUFFLE a lamp", "--out", out)
    assert code == 0, err
    # the fake put the preview first: the RGBA one is still the one written, with the seed Forge picked
    assert pngs(out) == ["0001-shuffle-a-lamp-1000.png"]
    with Image.open(out / "0001-shuffle-a-lamp-1000.png") as im:
        assert im.mode == "RGBA"
    req = forge.requests[0]
    assert (req["width"], req["height"], req["steps"], req["seed"], req["cfg_scale"], req["batch_size"]) == \
        (1024, 1024, 20, -1, 7.0, 1)
    assert script_args(req)["method"] == "(SDXL) Only Generate Transparent Image (Attention Injection)"


def test_jsonl_overrides_images_and_batches(forge, tmp_path, capsys):
    fg, bg, line_fg = tmp_path / "fg.png", tmp_path / "bg.png", tmp_path / "line_fg.png"
    fg.write_bytes(png_bytes("RGBA", (4, 4)))
    bg.write_bytes(png_bytes("RGB", (4, 4)))
    line_fg.write_bytes(png_bytes("RGBA", (6, 6), (1, 2, 3, 4)))
    prompts = write_prompts(
        tmp_path,
        "plain prompt",
        json.dumps({"prompt": "a batch", "batch_size": 2, "seed": 7, "width": 768, "steps": 5,
                    "negative_prompt": "ugly", "cfg_scale": 3, "sampler_name": "Euler"}),
        json.dumps({"prompt": "a blend", "method": OPAQUE_METHOD, "fg_image": "line_fg.png", "bg_image": None,
                    "weight": 0.5, "stop_at": 0.25, "resize_mode": "Crop and Resize"}),
    )
    out = tmp_path / "out"
    code, err = run(capsys, "--url", forge.url, "--prompts", prompts, "--out", out, "--preview",
                    "--fg-image", fg, "--bg-image", bg)
    assert code == 0, err
    assert pngs(out) == [
        "0001-plain-prompt-1000-preview.png", "0001-plain-prompt-1000.png",
        "0002-a-batch-7-1-preview.png", "0002-a-batch-7-1.png", "0002-a-batch-7-2-preview.png",
        "0002-a-batch-7-2.png",
        "0003-a-blend-1100.png",  # an opaque method: its RGB image is the main one, no preview
    ]
    with Image.open(out / "0003-a-blend-1100.png") as im:
        assert im.mode == "RGB"
    b64 = lambda p: base64.b64encode(p.read_bytes()).decode("ascii")
    first, batch, blend = forge.requests
    assert script_args(first)["fg_image"] == b64(fg) and script_args(first)["bg_image"] == b64(bg)
    assert "blend_image" not in script_args(first)
    assert (batch["batch_size"], batch["seed"], batch["width"], batch["height"], batch["steps"]) == (2, 7, 768, 1024, 5)
    assert (batch["negative_prompt"], batch["cfg_scale"], batch["sampler_name"]) == ("ugly", 3.0, "Euler")
    assert script_args(blend) == {"enabled": True, "method": OPAQUE_METHOD, "weight": 0.5, "ending_step": 0.25,
                                  "fg_image": b64(line_fg), "resize_mode": "Crop and Resize"}


def test_rerun_skips_existing(forge, tmp_path, capsys):
    prompts = write_prompts(tmp_path, "one", "two")
    out = tmp_path / "out"
    assert run(capsys, "--url", forge.url, "--prompts", prompts, "--out", out)[0] == 0
    assert run(capsys, "--url", forge.url, "--prompts", prompts, "--out", out, "--seed", 5)[0] == 0
    assert len(forge.requests) == 4 and pngs(out) == ["0001-one-1000.png", "0001-one-5.png", "0002-two-1100.png",
                                                      "0002-two-5.png"]
    # random and fixed seed again: nothing sent
    for extra in ((), ("--seed", 5)):
        code, err = run(capsys, "--url", forge.url, "--prompts", prompts, "--out", out, *extra)
        assert code == 0 and len(forge.requests) == 4
        assert "[2/2] skipped" in err
    # a changed prompt is generated, the unchanged one skipped
    prompts = write_prompts(tmp_path, "one", "two bis")
    code, err = run(capsys, "--url", forge.url, "--prompts", prompts, "--out", out)
    assert code == 0 and forge.prompts[4:] == ["two bis"]


def test_http_422_prints_message_and_goes_on(forge, tmp_path, capsys):
    prompts = write_prompts(tmp_path, "first", "FAIL422 second", "third")
    out = tmp_path / "out"
    code, err = run(capsys, "--url", forge.url, "--prompts", prompts, "--out", out)
    assert code == 1
    assert LAYERDIFFUSE_422 in err and "[2/3] failed" in err and "HTTP 422" in err
    assert pngs(out) == ["0001-first-1000.png", "0003-third-1100.png"]
    # a re-run retries only the failed prompt
    code, err = run(capsys, "--url", forge.url, "--prompts", prompts, "--out", out)
    assert code == 1 and forge.prompts[3:] == ["FAIL422 second"]


def test_dropped_connection_goes_on(forge, tmp_path, capsys):
    prompts = write_prompts(tmp_path, "DROP first", "second")
    out = tmp_path / "out"
    code, err = run(capsys, "--url", forge.url, "--prompts", prompts, "--out", out)
    assert code == 1
    assert "[1/2] failed" in err and "dropped the connection" in err
    assert pngs(out) == ["0002-second-1000.png"]


def test_timeout_goes_on(forge, tmp_path, capsys):
    prompts = write_prompts(tmp_path, "SLOW first", "second")
    out = tmp_path / "out"
    start = time.monotonic()
    code, err = run(capsys, "--url", forge.url, "--prompts", prompts, "--out", out, "--timeout", 0.4)
    assert time.monotonic() - start < 1.4
    assert code == 1
    assert "[1/2] failed" in err and "no answer within 0.4 s" in err
    assert pngs(out) == ["0002-second-1000.png"]


def test_not_reachable(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prompts = write_prompts(tmp_path, "one", "two")
    code, err = run(capsys, "--url", f"127.0.0.1:{port}", "--prompts", prompts, "--out", tmp_path / "out")
    assert code == 1
    assert f"Forge is not reachable at http://127.0.0.1:{port}: start it, with --api" in err
    assert "1 prompt(s) not sent" in err
    assert not (tmp_path / "out").exists()


def test_api_off(tmp_path, capsys):
    with FakeForge(api_enabled=False) as forge:
        code, err = run(capsys, "--url", forge.url, "--prompt", "one", "--out", tmp_path / "out")
    assert code == 1
    assert "HTTP 404" in err and "start Forge with --api" in err
    assert not (tmp_path / "out").exists()


def test_bad_prompts_file_sends_nothing(forge, tmp_path, capsys):
    prompts = write_prompts(tmp_path, "fine", '{"prompt": "x", "widht": 5}', '{"prompt": ', '{"width": 5}',
                            '{"prompt": "y", "fg_image": "missing.png"}', '{"prompt": "z", "steps": "ten"}')
    code, err = run(capsys, "--url", forge.url, "--prompts", prompts, "--out", tmp_path / "out")
    assert code == 2 and forge.requests == []
    for needle in ("prompts.txt:2: unknown key 'widht'", "prompts.txt:3: not valid JSON",
                   'prompts.txt:4: a JSON line needs a non-empty "prompt"', "image file not found: missing.png",
                   "prompts.txt:6: 'steps' must be a whole number"):
        assert needle in err
    code, err = run(capsys, "--url", forge.url, "--prompt", "x", "--fg-image", tmp_path / "nope.png",
                    "--out", tmp_path / "out")
    assert code == 2 and "--fg-image: image file not found" in err and forge.requests == []


def test_ctrl_c_exits_130(forge, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(client, "post_json", interrupted)
    code, err = run(capsys, "--url", forge.url, "--prompt", "one", "--out", tmp_path / "out")
    assert code == 130 and "interrupted" in err


def test_png_colour_type_and_slug():
    assert client.png_info(png_bytes("RGBA", (3, 5))) == (3, 5, 6)
    assert client.png_info(png_bytes("RGB")) [2] == 2
    assert client.has_alpha(png_bytes("LA", color=(1, 2))) and not client.has_alpha(png_bytes("L", color=1))
    assert client.png_info(b"not a png") is None
    assert client.slugify("  (Glass:1.2) Bottle, <lora:x:1>!! ") == "glass-1-2-bottle-lora-x-1"
    assert client.slugify("???") == "prompt"
    assert len(client.slugify("word " * 40)) <= client.SLUG_MAX


def test_standard_library_only():
    code = (
        "import importlib.util, sys\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('c', {str(CLIENT_PATH)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['c'] = m; spec.loader.exec_module(m)\n"
        "top = {n.split('.')[0] for n in set(sys.modules) - before}\n"
        "extra = sorted(n for n in top - set(sys.stdlib_module_names) - set(sys.builtin_module_names)"
        " if n not in ('c', '__main__'))\n"
        "print(extra)\n"
    )
    result = subprocess.run([sys.executable, "-I", "-c", code], check=False, capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_written_files_have_the_usual_permissions(tmp_path):
    import stat
    target = tmp_path / "x.png"
    client.write_atomic(str(target), b"data")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~mask
