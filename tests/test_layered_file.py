"""OpenRaster export: layout of the zip, stack.xml, pixels, merged image, thumbnail, atomic writes, builders."""
import io
import os
import re
import struct
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
from PIL import Image

from lib_layerdiffusion.images import layered_file
from lib_layerdiffusion.images.layered_file import (Layer, group_layers, read_ora, transparent_image_layers,
                                             write_ora)

W, H = 96, 70


def _random_image(mode, seed, size=(W, H)):
    rng = np.random.default_rng(seed)
    channels = {"RGBA": 4, "RGB": 3}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    if mode == "RGBA":
        arr[:10, :, 3] = 0  # fully transparent pixels that still carry colour must survive the round trip
        arr[10:20, :, 3] = 255
    return Image.fromarray(arr, mode)


@pytest.fixture
def stack():
    return [
        Layer("background", _random_image("RGB", 1)),
        Layer("hidden notes", _random_image("RGBA", 2), visible=False),
        Layer("foreground", _random_image("RGBA", 3)),
    ]


@pytest.fixture
def ora(tmp_path, stack):
    path = tmp_path / "out.ora"
    assert write_ora(path, stack) == str(path)
    return path


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_round_trip(ora, stack):
    size, layers = read_ora(ora)
    assert size == (W, H)
    assert [l.name for l in layers] == ["background", "hidden notes", "foreground"]  # bottom to top
    assert [l.visible for l in layers] == [True, False, True]
    assert [l.opacity for l in layers] == [1.0, 1.0, 1.0]
    for written, read in zip(stack, layers):
        assert _same_pixels(read.image, written.image), written.name
    name, visible, opacity, image = layers[0]  # plain tuples work too
    assert (name, visible, opacity, image.mode) == ("background", True, 1.0, "RGB")


def test_mimetype_is_first_stored_and_exact(ora):
    raw = ora.read_bytes()
    assert raw[:4] == b"PK\x03\x04"  # a local file header at offset 0
    method, _, _, _, _, _, name_len, extra_len = struct.unpack("<HHHIIIHH", raw[8:30])
    assert (method, name_len, extra_len) == (0, 8, 0)  # stored, "mimetype", no extra field
    assert raw[30:54] == b"mimetypeimage/openraster"
    with zipfile.ZipFile(ora) as zf:
        first = zf.infolist()[0]
        assert first.filename == "mimetype"
        assert first.compress_type == zipfile.ZIP_STORED
        assert first.header_offset == 0 and first.extra == b""
        assert zf.read("mimetype") == b"image/openraster"
        assert zf.testzip() is None
        names = zf.namelist()
    assert names[1] == "stack.xml"
    assert {"mergedimage.png", "Thumbnails/thumbnail.png"} <= set(names)


def test_stack_xml_lists_top_layer_first(ora):
    with zipfile.ZipFile(ora) as zf:
        root = ET.fromstring(zf.read("stack.xml"))
        names = set(zf.namelist())
    assert root.tag == "image"
    assert (root.get("version"), root.get("w"), root.get("h")) == ("0.0.3", str(W), str(H))
    stacks = root.findall("stack")
    assert len(stacks) == 1
    layers = list(stacks[0])
    assert [l.tag for l in layers] == ["layer"] * 3
    assert [l.get("name") for l in layers] == ["foreground", "hidden notes", "background"]
    assert [l.get("visibility") for l in layers] == ["visible", "hidden", "visible"]
    for layer in layers:
        assert re.fullmatch(r"data/[A-Za-z0-9_-]+\.png", layer.get("src"))
        assert layer.get("src") in names
        assert (layer.get("x"), layer.get("y"), layer.get("composite-op")) == ("0", "0", "svg:src-over")
        assert float(layer.get("opacity")) == 1.0
    # every data file is referenced
    assert {n for n in names if n.startswith("data/")} == {l.get("src") for l in layers}


def test_merged_image_is_the_composite_of_visible_layers(ora, stack):
    with zipfile.ZipFile(ora) as zf:
        merged = Image.open(io.BytesIO(zf.read("mergedimage.png")))
        merged.load()
    expected = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    for layer in stack:
        if layer.visible:
            expected = Image.alpha_composite(expected, layer.image.convert("RGBA"))
    assert _same_pixels(merged, expected)


def test_opacity_is_written_read_and_applied(tmp_path):
    red = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    path = write_ora(tmp_path / "o.ora", [Layer("half", red, opacity=0.5)])
    _, [layer] = read_ora(path)
    assert layer.opacity == 0.5 and _same_pixels(layer.image, red)  # opacity is not baked into the pixels
    with zipfile.ZipFile(path) as zf:
        merged = np.asarray(Image.open(io.BytesIO(zf.read("mergedimage.png"))))
    assert np.all(merged == [255, 0, 0, 128])


def test_thumbnail_fits_256_and_keeps_aspect(tmp_path):
    big = Image.new("RGB", (1024, 512), (10, 20, 30))
    path = write_ora(tmp_path / "big.ora", transparent_image_layers(big.convert("RGBA")))
    with zipfile.ZipFile(path) as zf:
        thumb = Image.open(io.BytesIO(zf.read("Thumbnails/thumbnail.png")))
        merged = Image.open(io.BytesIO(zf.read("mergedimage.png")))
        assert thumb.size == (256, 128) and merged.size == (1024, 512) and merged.mode == "RGBA"
        assert thumb.info.get("interlace", 0) == 0
    small = write_ora(tmp_path / "small.ora", [Layer("x", Image.new("RGB", (40, 30)))])
    with zipfile.ZipFile(small) as zf:
        assert Image.open(io.BytesIO(zf.read("Thumbnails/thumbnail.png"))).size == (40, 30)  # never upscaled


def test_explicit_canvas_size(tmp_path):
    layer = Layer("small", _random_image("RGBA", 4, size=(20, 10)))
    path = write_ora(tmp_path / "c.ora", [layer], size=(50, 40))
    size, [read] = read_ora(path)
    assert size == (50, 40) and _same_pixels(read.image, layer.image)
    with zipfile.ZipFile(path) as zf:
        merged = np.asarray(Image.open(io.BytesIO(zf.read("mergedimage.png"))))
    assert merged.shape == (40, 50, 4)
    assert np.array_equal(merged[:10, :20], np.asarray(Image.alpha_composite(
        Image.new("RGBA", (20, 10), (0, 0, 0, 0)), layer.image)))
    assert not merged[10:].any() and not merged[:, 20:].any()


def test_layer_file_names_are_safe_and_unique(tmp_path):
    names = ["../../etc/passwd", "a b", "A B", "a_b", "", "con", "前景", "x" * 300, 'quote"<&>', "ctl\x01char"]
    img = Image.new("RGB", (4, 4))
    path = write_ora(tmp_path / "n.ora", [Layer(n, img) for n in names])
    with zipfile.ZipFile(path) as zf:
        srcs = [l.get("src") for l in ET.fromstring(zf.read("stack.xml")).iter("layer")]
        entries = zf.namelist()
    assert len({s.lower() for s in srcs}) == len(names)
    for src in srcs:
        assert re.fullmatch(r"data/[A-Za-z0-9_-]{1,70}\.png", src), src
        assert src in entries
        assert src.lower() != "data/con.png"
    _, layers = read_ora(path)
    expected = [n.replace("\x01", "") for n in names]  # characters XML cannot hold are dropped
    assert [l.name for l in layers] == expected


def test_write_is_atomic(tmp_path, stack, monkeypatch):
    path = tmp_path / "keep.ora"
    path.write_bytes(b"previous content")
    calls = []

    def failing_png(image):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return b"\x89PNG fake"

    monkeypatch.setattr(layered_file, "_png_bytes", failing_png)
    with pytest.raises(OSError, match="disk full"):
        write_ora(path, stack)
    assert path.read_bytes() == b"previous content"
    assert os.listdir(tmp_path) == ["keep.ora"]  # no temporary file left behind
    monkeypatch.undo()
    write_ora(path, stack)  # replaces the existing file
    assert os.listdir(tmp_path) == ["keep.ora"]
    assert read_ora(path)[1][0].name == "background"


def test_invalid_input():
    img = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError):
        write_ora("unused.ora", [])
    with pytest.raises(ValueError):
        Layer("x", img, opacity=1.5)
    with pytest.raises(ValueError):
        Layer("x", img, opacity=float("nan"))
    with pytest.raises(TypeError):
        Layer("x", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(TypeError):
        write_ora("unused.ora", [("x", img)])
    with pytest.raises(ValueError):
        write_ora("unused.ora", [Layer("x", img)], size=(0, 4))
    assert not os.path.exists("unused.ora")
    with pytest.raises(Exception):  # frozen
        Layer("x", img).name = "y"


def test_read_rejects_other_zips(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("stack.xml", "<image w='1' h='1'><stack/></image>")
    with pytest.raises(ValueError, match="not an OpenRaster"):
        read_ora(path)


def test_read_third_party_groups_and_offsets(tmp_path):
    # as other programs write it: nested stacks, offsets, opacity on groups
    def png(color, size):
        buf = io.BytesIO()
        Image.new("RGBA", size, color).save(buf, "PNG")
        return buf.getvalue()

    xml = ('<?xml version="1.0" encoding="UTF-8"?><image version="0.0.5" w="10" h="8"><stack>'
           '<stack name="group" opacity="0.5" visibility="hidden">'
           '<layer name="inner" src="data/a.png" x="2" y="3" opacity="0.5"/></stack>'
           '<layer name="bottom" src="data/b.png"/></stack></image>')
    path = tmp_path / "third.ora"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mimetype", "image/openraster")
        zf.writestr("stack.xml", xml)
        zf.writestr("data/a.png", png((255, 0, 0, 255), (4, 4)))
        zf.writestr("data/b.png", png((0, 0, 255, 255), (10, 8)))
    size, layers = read_ora(path)
    assert size == (10, 8)
    assert [(l.name, l.visible, l.opacity) for l in layers] == [("bottom", True, 1.0), ("inner", False, 0.25)]
    inner = np.asarray(layers[1].image)
    assert inner.shape == (8, 10, 4)
    assert np.all(inner[3:7, 2:6] == [255, 0, 0, 255]) and inner[:3].sum() == 0 and inner[:, :2].sum() == 0


def test_transparent_image_layers():
    rgba = _random_image("RGBA", 5, size=(150, 70))
    checker, image = transparent_image_layers(rgba)
    assert (checker.name, checker.visible, checker.image.mode, checker.image.size) == (
        "checkerboard", False, "RGB", (150, 70))
    assert (image.name, image.visible) == ("transparent image", True) and _same_pixels(image.image, rgba)
    board = np.asarray(checker.image)
    assert np.all(board[0, 0] == 114) and np.all(board[63, 63] == 114)
    assert np.all(board[0, 64] == 140) and np.all(board[64, 0] == 140) and np.all(board[64, 64] == 114)
    assert np.all(board[69, 149] == 140) and np.all(board[69, 128] == 140)  # edge squares cut, not stretched
    # the same greys as the preview checkerboard of outputs.py
    pytest.importorskip("torch")
    from lib_layerdiffusion.images.outputs import _to_uint8, checkerboard
    assert np.array_equal(board[..., 0], _to_uint8(checkerboard(70, 150))[..., 0])
    # numpy arrays and other modes are accepted
    _, from_array = transparent_image_layers(np.asarray(rgba))
    assert _same_pixels(from_array.image, rgba)


def test_group_layers():
    fg = _random_image("RGBA", 6)
    bg = _random_image("RGB", 7)
    blend = _random_image("RGB", 8)
    layers = group_layers(fg=fg, bg=bg, blend=blend)
    assert [(l.name, l.visible, l.image.mode) for l in layers] == [
        ("blended", False, "RGB"), ("background", True, "RGB"), ("foreground", True, "RGBA")]
    assert [l.name for l in group_layers(fg=fg)] == ["foreground"]
    assert [l.name for l in group_layers(bg=bg, blend=blend)] == ["blended", "background"]
    assert group_layers() == []
    # an RGBA background is flattened to RGB, an RGB foreground gets an opaque alpha
    layers = group_layers(fg=bg, bg=fg)
    assert [l.image.mode for l in layers] == ["RGB", "RGBA"]
    assert np.all(np.asarray(layers[1].image)[..., 3] == 255)


def test_group_file_round_trip(tmp_path):
    fg, bg, blend = _random_image("RGBA", 9), _random_image("RGB", 10), _random_image("RGB", 11)
    path = write_ora(tmp_path / "g.ora", group_layers(fg=fg, bg=bg, blend=blend))
    _, layers = read_ora(path)
    assert [l.name for l in layers] == ["blended", "background", "foreground"]
    for read, original in zip(layers, [blend, bg, fg]):
        assert _same_pixels(read.image, original)


def test_third_party_reader_pyora(ora, stack):
    pyora = pytest.importorskip("pyora")
    project = pyora.Project.load(str(ora))
    assert tuple(project.dimensions) == (W, H)
    layers = list(project.iter_layers)  # bottom to top
    assert [l.name for l in layers] == ["background", "hidden notes", "foreground"]
    assert [l.visible for l in layers] == [True, False, True]
    assert [float(l.opacity) for l in layers] == [1.0, 1.0, 1.0]
    for theirs, ours in zip(layers, stack):
        assert np.array_equal(np.asarray(theirs.get_image_data()), np.asarray(ours.image.convert("RGBA")))
    # pyora's own renderer agrees with our merged image (up to rounding)
    with zipfile.ZipFile(ora) as zf:
        merged = np.asarray(Image.open(io.BytesIO(zf.read("mergedimage.png")))).astype(int)
    rendered = np.asarray(project.get_image_data().convert("RGBA")).astype(int)
    visible = merged[..., 3] > 0
    assert np.abs(rendered[..., 3] - merged[..., 3]).max() <= 2
    assert np.abs(rendered[visible][:, :3] - merged[visible][:, :3]).max() <= 2
