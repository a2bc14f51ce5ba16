"""Photoshop export: each method's layer stack written with psd-tools and read back with psd-tools (names,
visibility, opacity, pixels, composite), the XMP infotext, atomic writes, and psd-tools staying optional."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

psd_tools = pytest.importorskip("psd_tools")
from psd_tools import PSDImage  # noqa: E402

from lib_layerdiffusion.images import layer_export, psd_file  # noqa: E402
from lib_layerdiffusion.images.layered_file import Layer, composite, read_ora  # noqa: E402
from lib_layerdiffusion.request.methods import METHODS, Layer as Frame  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
W, H = 72, 48


def _random_image(mode, seed, size=(W, H)):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], len(mode)), dtype=np.uint8)
    if mode == "RGBA":
        arr[:8, :, 3] = 0  # fully transparent pixels that still carry colour
        arr[8:16, :, 3] = 255
    return Image.fromarray(arr, mode)


def _rgba(image):
    return np.asarray(image.convert("RGBA")).astype(np.int64)


def _assert_same_layer(read, expected: Layer):
    """A layer read back by psd-tools: name, visibility, opacity, and its pixels placed on the canvas exactly."""
    assert read.name == expected.name
    assert read.visible == expected.visible
    assert read.opacity == round(expected.opacity * 255)
    assert read.kind == "pixel" and read.bbox == (0, 0, *expected.image.size)
    got, want = _rgba(read.topil()), _rgba(expected.image)
    # colour counts where alpha > 0 (Photoshop's own files keep the colour of invisible pixels too, but
    # psd-tools is free to); alpha exactly
    assert np.array_equal(got[..., 3], want[..., 3]), expected.name
    visible = want[..., 3] > 0
    assert np.abs(got[visible][:, :3] - want[visible][:, :3]).max(initial=0) <= 1, expected.name


def _exact_composite(layers, size):
    """Source-over of the visible layers in float (straight colour and alpha in [0, 1]), layers at the origin."""
    width, height = size
    premultiplied = np.zeros((height, width, 3))
    alpha = np.zeros((height, width, 1))
    for layer in layers:
        if not layer.visible:
            continue
        arr = np.zeros((height, width, 4))
        image = _rgba(layer.image)[:height, :width] / 255.0
        arr[:image.shape[0], :image.shape[1]] = image
        a = arr[..., 3:] * layer.opacity
        premultiplied = arr[..., :3] * a + premultiplied * (1 - a)
        alpha = a + alpha * (1 - a)
    colour = np.divide(premultiplied, alpha, out=np.zeros_like(premultiplied), where=alpha > 0)
    return colour, alpha


def _assert_composite(document, layers, size):
    """psd-tools' composite of the file's layers, and the merged image stored in the file, against the exact
    composite of the layers written: alpha and alpha-weighted colour within 1/255."""
    from psd_tools.composite import composite as psd_composite
    colour, alpha = _exact_composite(layers, size)
    got_colour, _, got_alpha = psd_composite(document)  # float, straight colour
    assert got_colour.shape == colour.shape and got_alpha.shape == alpha.shape
    assert np.abs(got_alpha - alpha).max() <= 1 / 255
    assert np.abs(got_colour * got_alpha - colour * alpha).max() <= 1 / 255
    # the merged image stored in the file, for readers that show only that (8-bit, straight colour)
    stored = document.numpy()
    assert stored.shape == (size[1], size[0], 4)
    assert np.abs(stored[..., 3:] - alpha).max() <= 1 / 255
    assert np.abs(stored[..., :3] * stored[..., 3:] - colour * alpha).max() <= 1 / 255
    assert document.topil().mode == "RGBA"


def test_round_trip_layers_composite_and_order(tmp_path):
    layers = [
        Layer("blended", _random_image("RGB", 1), visible=False),
        Layer("background", _random_image("RGB", 2)),
        Layer("half", _random_image("RGBA", 3), opacity=0.5),
        Layer("foreground", _random_image("RGBA", 4)),
    ]
    path = tmp_path / "out.psd"
    assert psd_file.write_psd(path, layers) == str(path)
    document = PSDImage.open(path)
    assert document.size == (W, H) and document.color_mode == psd_tools.constants.ColorMode.RGB
    assert document.depth == 8
    read = list(document)  # psd-tools lists bottom to top
    assert [l.name for l in read] == ["blended", "background", "half", "foreground"]
    for got, want in zip(read, layers):
        _assert_same_layer(got, want)
    _assert_composite(document, layers, (W, H))


def _method_group(method, seed):
    """The images a method's generation saves for one group, and its input images."""
    frames = {}
    for n, frame in enumerate(method.frames):
        mode = "RGBA" if frame in method.transparent_frames else "RGB"
        frames[frame] = _random_image(mode, seed + n)
    inputs = {frame: _random_image("RGBA", seed + 10 + n, size=(W * 2, H * 2)) for n, frame in
              enumerate(method.inputs)}
    return frames, inputs


EXPECTED_NAMES = {  # bottom to top, per method, as the ORA file has them
    "transparent": [("checkerboard", False), ("transparent image", True)],
}


@pytest.mark.parametrize("method", METHODS, ids=[m.model_file for m in METHODS])
def test_every_methods_layer_stack_round_trips(tmp_path, method):
    frames, inputs = _method_group(method, seed=100)
    collector = layer_export.GroupCollector(method, inputs, "Crop and Resize", formats=("ora", "psd"))
    written = ()
    for index, frame in enumerate(method.frames):
        png = tmp_path / f"00001-42-{frame.value}.png"
        frames[frame].save(png)
        written = collector.add(index, frame, frames[frame], str(png), infotext=f"a cat, frame {index}")
    assert [Path(p).suffix for p in written] == [".ora", ".psd"]
    ora_path, psd_path = map(Path, written)
    assert ora_path.stem == psd_path.stem == "00001-42"  # beside the PNGs, without the layer suffix

    expected, size = collector.layer_stack(frames)
    if method.makes_transparent and method.group_size == 1 and not method.inputs:
        assert [(l.name, l.visible) for l in expected] == EXPECTED_NAMES["transparent"]
    else:  # the layer methods: blended (hidden), background, foreground; frames and inputs together
        present = set(method.frames) | set(method.inputs)
        names = [n for f, n in ((Frame.BLEND, "blended"), (Frame.BACKGROUND, "background"),
                                (Frame.FOREGROUND, "foreground")) if f in present]
        assert [l.name for l in expected] == names
        assert [l.visible for l in expected] == [l.name != "blended" for l in expected]

    document = PSDImage.open(psd_path)
    assert document.size == size == (W, H)
    read = list(document)
    assert len(read) == len(expected)
    for got, want in zip(read, expected):
        _assert_same_layer(got, want)
    _assert_composite(document, expected, size)
    # the same stack as the OpenRaster file
    _, ora_layers = read_ora(ora_path)
    assert [(l.name, l.visible) for l in ora_layers] == [(l.name, l.visible) for l in read]
    for ora_layer, got in zip(ora_layers, read):
        want = _rgba(ora_layer.image)
        assert np.array_equal(_rgba(got.topil())[..., 3], want[..., 3])
    assert psd_file.read_psd_infotext(psd_path) == "a cat, frame 0"  # the group's first image's


def test_infotext_in_xmp_metadata(tmp_path):
    infotext = ('a "glass" bottle <b> & café 猫\nNegative prompt: blurry\nSteps: 20, Seed: 1, '
                'layerdiffusion_method: (SDXL) Only Generate Transparent Image (Attention Injection)')
    path = psd_file.write_psd(tmp_path / "i.psd", [Layer("x", _random_image("RGBA", 5))], infotext=infotext)
    assert psd_file.read_psd_infotext(path) == infotext
    packet = bytes(PSDImage.open(path).image_resources.get_data(psd_tools.constants.Resource.XMP_METADATA))
    assert packet.startswith(b"<?xpacket begin=") and packet.rstrip().endswith(b'<?xpacket end="w"?>')
    assert b"<xmp:CreatorTool>" in packet and b"dc:description" in packet
    # no infotext: the packet names the tool only
    path = psd_file.write_psd(tmp_path / "n.psd", [Layer("x", _random_image("RGB", 6))])
    assert psd_file.read_psd_infotext(path) is None
    # characters XML cannot hold are dropped, not written as a broken packet
    path = psd_file.write_psd(tmp_path / "c.psd", [Layer("x", _random_image("RGB", 6))], infotext="a\x01b")
    assert psd_file.read_psd_infotext(path) == "ab"


def test_unicode_and_long_layer_names(tmp_path):
    names = ["前景 ü", "x" * 300, ""]
    path = psd_file.write_psd(tmp_path / "u.psd", [Layer(n, _random_image("RGB", 7)) for n in names])
    assert [l.name for l in PSDImage.open(path)] == ["前景 ü", "x" * 255, ""]


def test_explicit_canvas_and_small_layer(tmp_path):
    small = Layer("small", _random_image("RGBA", 8, size=(20, 10)))
    path = psd_file.write_psd(tmp_path / "c.psd", [small], size=(50, 40))
    document = PSDImage.open(path)
    assert document.size == (50, 40)
    (layer,) = list(document)
    assert layer.bbox[:2] == (0, 0)
    _assert_composite(document, [small], (50, 40))


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "keep.psd"
    path.write_bytes(b"previous content")

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"8BPS half a file")
        raise OSError("disk full")

    monkeypatch.setattr(PSDImage, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        psd_file.write_psd(path, [Layer("x", _random_image("RGB", 9))])
    assert path.read_bytes() == b"previous content"
    assert os.listdir(tmp_path) == ["keep.psd"]  # no temporary file left behind
    monkeypatch.undo()
    psd_file.write_psd(path, [Layer("x", _random_image("RGB", 9))])
    assert os.listdir(tmp_path) == ["keep.psd"] and [l.name for l in PSDImage.open(path)] == ["x"]


def test_invalid_input():
    with pytest.raises(ValueError):
        psd_file.write_psd("unused.psd", [])
    with pytest.raises(TypeError):
        psd_file.write_psd("unused.psd", [("x", Image.new("RGB", (4, 4)))])
    assert not os.path.exists("unused.psd")


def test_without_psd_tools_a_clear_message(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "psd_tools" or m.startswith("psd_tools.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psd_tools", None)  # import psd_tools raises ImportError
    assert not psd_file.available()
    with pytest.raises(ImportError, match=r"\[LayerDiffuse\] Writing .psd files needs psd-tools: install it"):
        psd_file.write_psd(tmp_path / "x.psd", [Layer("x", Image.new("RGB", (4, 4)))])
    assert list(tmp_path.iterdir()) == []


def test_psd_tools_is_imported_lazily():
    code = ("import sys; import lib_layerdiffusion.generation, lib_layerdiffusion.images.psd_file, "
            "lib_layerdiffusion.images.layer_export; "
            "assert lib_layerdiffusion.images.psd_file.available(); "
            "print(sorted(m for m in sys.modules if m.startswith('psd_tools')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
