"""The one-time .pth -> .safetensors conversion: real torch.save pickles, checked, never executed.

Most tests use a small test-only manifest with the sections of the real one; one converts a full-size (bf16,
210 MB) TransparentVAE.pth with the manifest shipped in the package and loads it through the public API.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lib_layerdiffusion import load_transparent_decoder, load_transparent_encoder
from lib_layerdiffusion.errors import ModelFileError
from lib_layerdiffusion.networks import pickle_conversion
from lib_layerdiffusion.networks.pickle_conversion import (
    DEFAULT_MANIFEST,
    check_converted,
    convert_pickle_checkpoint,
    converted_path,
    ensure_converted,
    load_manifest,
)
from lib_layerdiffusion.networks.safetensors_io import read_header
from lib_layerdiffusion.networks.transparent_vae import FLUX_LATENT

try:  # tests/ may or may not be a package
    from tests.seeded_weights import FIXTURES, seeded_array
except ImportError:
    from seeded_weights import FIXTURES, seeded_array

SMALL_MANIFEST = {
    "title": "the test transparent VAE",
    "filename": "TransparentVAE.pth",
    "flux_transparent_decoder": {"decoder.conv_in.weight": [8, 3, 3, 3], "decoder.conv_in.bias": [8],
                                 "decoder.norm.weight": [8]},
    "flux_transparent_encoder": {"encoder.blocks.0.weight": [8, 4, 3, 3], "encoder.blocks.0.bias": [8]},
    "flux_vae": ["sd_vae.decoder.conv_in.weight", "sd_vae.encoder.conv_in.bias"],
}
REQUIRED = sorted([*SMALL_MANIFEST["flux_transparent_decoder"], *SMALL_MANIFEST["flux_transparent_encoder"]])


def seeded(section: dict, dtype=torch.bfloat16) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((k, torch.from_numpy(seeded_array(k, s)).to(dtype)) for k, s in sorted(section.items()))


def small_state(with_sd_vae: bool = True, dtype=torch.bfloat16) -> OrderedDict[str, torch.Tensor]:
    state = OrderedDict()
    state.update(seeded(SMALL_MANIFEST["flux_transparent_decoder"], dtype))
    state.update(seeded(SMALL_MANIFEST["flux_transparent_encoder"], dtype))
    if with_sd_vae:
        state["sd_vae.decoder.conv_in.weight"] = torch.ones(4, 16, 3, 3, dtype=dtype)
        state["sd_vae.encoder.conv_in.bias"] = torch.ones(4, dtype=dtype)
    return state


def write_pickle(path: Path, state) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, str(path))
    return path


@pytest.fixture
def pth(tmp_path) -> Path:
    return write_pickle(tmp_path / "models" / "TransparentVAE.pth", small_state())


def assert_nothing_written(folder: Path):
    assert not list(folder.glob("*.safetensors")) and not list(folder.glob("*.tmp-*"))


# ------------------------------------------------------------------------------------------ converting

@pytest.mark.parametrize("with_sd_vae", [True, False])
def test_converts_the_decoder_and_encoder_tensors_only(tmp_path, with_sd_vae):
    source = small_state(with_sd_vae)
    pth = write_pickle(tmp_path / "TransparentVAE.pth", source)
    out = convert_pickle_checkpoint(pth, SMALL_MANIFEST)
    assert out == str(tmp_path / "TransparentVAE.safetensors") == converted_path(pth)
    header = read_header(out)
    assert sorted(header) == REQUIRED
    assert {info["dtype"] for info in header.values()} == {"BF16"}  # the source dtype is kept
    with safe_open(out, framework="pt") as f:
        assert f.metadata()["converted_from"] == "TransparentVAE.pth"
        for key in REQUIRED:
            got = f.get_tensor(key)
            assert got.dtype == torch.bfloat16 and torch.equal(got, source[key])
    # the conversion gets its source's permissions (safetensors alone writes owner-only files)
    assert os.stat(out).st_mode & 0o777 == os.stat(pth).st_mode & 0o777
    assert not list(tmp_path.glob("*.tmp-*"))


def test_other_float_dtypes_are_kept(tmp_path):
    pth = write_pickle(tmp_path / "TransparentVAE.pth", small_state(dtype=torch.float32))
    out = convert_pickle_checkpoint(pth, SMALL_MANIFEST)
    assert {info["dtype"] for info in read_header(out).values()} == {"F32"}


def test_tied_tensors_are_written_apart(tmp_path):
    """safetensors refuses tensors sharing memory; torch.save keeps such ties."""
    manifest = dict(SMALL_MANIFEST, flux_transparent_encoder={"encoder.blocks.0.bias": [8], "encoder.tied": [8]})
    state = small_state(with_sd_vae=False)
    del state["encoder.blocks.0.weight"]
    state["encoder.tied"] = state["encoder.blocks.0.bias"]
    pth = write_pickle(tmp_path / "TransparentVAE.pth", state)
    out = convert_pickle_checkpoint(pth, manifest)
    with safe_open(out, framework="pt") as f:
        assert torch.equal(f.get_tensor("encoder.tied"), f.get_tensor("encoder.blocks.0.bias"))


def test_once_converted_the_pickle_is_never_opened_again(pth, monkeypatch):
    first = ensure_converted(pth, SMALL_MANIFEST)
    loads = []
    monkeypatch.setattr(pickle_conversion.torch, "load", lambda *a, **k: loads.append(a) or {})
    pth.write_bytes(b"not a pickle any more")
    assert ensure_converted(pth, SMALL_MANIFEST) == first
    pth.unlink()  # nor needed
    assert ensure_converted(pth, SMALL_MANIFEST) == first
    assert loads == []


def test_a_bad_conversion_in_place_is_reported_not_replaced(pth, monkeypatch):
    out = Path(converted_path(pth))
    torch.save({}, str(out))  # a pickle under the .safetensors name
    before = out.read_bytes()
    loads = []
    monkeypatch.setattr(pickle_conversion.torch, "load", lambda *a, **k: loads.append(a) or {})
    with pytest.raises(ModelFileError) as info:
        ensure_converted(pth, SMALL_MANIFEST)
    assert str(out) in str(info.value) and "Delete it to convert TransparentVAE.pth again" in str(info.value)
    assert out.read_bytes() == before and loads == []


def test_check_converted_wants_exactly_the_required_tensors(pth):
    out = convert_pickle_checkpoint(pth, SMALL_MANIFEST)
    assert sorted(check_converted(out, SMALL_MANIFEST)) == REQUIRED
    fewer = dict(SMALL_MANIFEST, flux_transparent_encoder={"encoder.blocks.0.bias": [8]})
    with pytest.raises(ModelFileError, match=r"unexpected entries: encoder\.blocks\.0\.weight"):
        check_converted(out, fewer)
    data = Path(out).read_bytes()
    Path(out).write_bytes(data[:-10])
    with pytest.raises(ModelFileError, match="truncated"):
        check_converted(out, SMALL_MANIFEST)


# ------------------------------------------------------------------------------------------ refused files

def _expect_refusal(pth: Path, match: str, manifest=SMALL_MANIFEST) -> str:
    with pytest.raises(ModelFileError, match=match) as info:
        ensure_converted(pth, manifest)
    assert str(pth) in str(info.value)
    assert_nothing_written(pth.parent)
    return str(info.value)


def test_missing_tensor(tmp_path):
    state = small_state()
    del state["decoder.norm.weight"]
    _expect_refusal(write_pickle(tmp_path / "TransparentVAE.pth", state), r"missing tensors: decoder\.norm\.weight")


def test_wrong_shape(tmp_path):
    state = small_state()
    state["encoder.blocks.0.weight"] = torch.zeros(8, 3, 3, 3, dtype=torch.bfloat16)
    _expect_refusal(write_pickle(tmp_path / "TransparentVAE.pth", state),
                    r"encoder\.blocks\.0\.weight has shape \(8, 3, 3, 3\), expected \(8, 4, 3, 3\)")


def test_unknown_entry_and_unlisted_sd_vae_key(tmp_path):
    state = small_state()
    state["sd_vae.quant_conv.weight"] = torch.zeros(2)
    state["lora.up"] = torch.zeros(2)
    _expect_refusal(write_pickle(tmp_path / "TransparentVAE.pth", state),
                    r"unexpected entries: lora\.up, sd_vae\.quant_conv\.weight")


def test_integer_and_non_tensor_values(tmp_path):
    state = small_state()
    state["decoder.conv_in.bias"] = torch.zeros(8, dtype=torch.int64)
    state["decoder.norm.weight"] = [1.0] * 8  # plain containers are what weights_only allows besides tensors
    _expect_refusal(write_pickle(tmp_path / "TransparentVAE.pth", state),
                    r"decoder\.conv_in\.bias is not a floating-point tensor; decoder\.norm\.weight is not a tensor")


def test_not_a_table(tmp_path):
    _expect_refusal(write_pickle(tmp_path / "TransparentVAE.pth", list(small_state().values())), "holds a list")


def test_nested_checkpoint_is_not_guessed(tmp_path):
    _expect_refusal(write_pickle(tmp_path / "TransparentVAE.pth", {"state_dict": small_state()}),
                    "unexpected entries: state_dict")


@pytest.mark.parametrize("data", [b"<!DOCTYPE html><html>Access denied</html>", b"", b"PK\x03\x04 cut"],
                         ids=["html-page", "empty", "cut-zip"])
def test_damaged_or_foreign_file(tmp_path, data):
    pth = tmp_path / "TransparentVAE.pth"
    pth.write_bytes(data)
    _expect_refusal(pth, "damaged or not a torch checkpoint")


def test_truncated_pickle(pth):
    data = pth.read_bytes()
    pth.write_bytes(data[: len(data) // 2])
    _expect_refusal(pth, "damaged or not a torch checkpoint")


def test_missing_pickle(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        ensure_converted(tmp_path / "TransparentVAE.pth", SMALL_MANIFEST)


def _create_marker(path):  # what a malicious pickle would run
    Path(path).write_text("code ran")
    return 0


class CodeRunner:
    """Unpickles by calling _create_marker(marker): the classic payload of a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_create_marker, (self.marker,))


class Custom:
    def __init__(self):
        self.value = 3


def test_code_in_the_pickle_is_refused_not_run(tmp_path):
    marker = tmp_path / "marker-convert"
    state = small_state()
    state["decoder.conv_in.bias"] = CodeRunner(marker)
    pth = write_pickle(tmp_path / "TransparentVAE.pth", state)
    message = _expect_refusal(pth, "refused and not loaded")
    assert "_create_marker" in message and "could run code" in message
    assert not marker.exists()
    # the payload is live: an unrestricted load of the same kind of file does run it
    control_marker = tmp_path / "marker-control"
    control = write_pickle(tmp_path / "control.pth", {"x": CodeRunner(control_marker)})
    torch.load(str(control), map_location="cpu", weights_only=False)
    assert control_marker.read_text() == "code ran"


def test_a_custom_object_is_refused(tmp_path):
    state = small_state()
    state["encoder.extra"] = Custom()
    message = _expect_refusal(write_pickle(tmp_path / "TransparentVAE.pth", state), "refused and not loaded")
    assert "Custom" in message


def test_the_pickle_is_loaded_with_weights_only(pth, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pickle_conversion.torch, "load", spy)
    convert_pickle_checkpoint(pth, SMALL_MANIFEST)
    assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_a_failed_write_leaves_nothing(pth, monkeypatch):
    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pickle_conversion, "save_file", full_disk)
    with pytest.raises(ModelFileError, match="Could not write .*TransparentVAE.safetensors.*No space left"):
        ensure_converted(pth, SMALL_MANIFEST)
    assert_nothing_written(pth.parent)


# ------------------------------------------------------------------------------------------ the real manifest

def test_shipped_manifest_is_the_reference_one():
    manifest = load_manifest()
    assert load_manifest(DEFAULT_MANIFEST) == manifest and load_manifest(None) is manifest
    with open(FIXTURES / "manifest_flux_transparent_vae.json") as f:
        reference = json.load(f)
    expected = {**reference["flux_transparent_decoder"], **reference["flux_transparent_encoder"]}
    assert dict(manifest.required) == {k: tuple(v) for k, v in expected.items()}
    assert len(manifest.required) == 538 + 18
    assert set(manifest.optional) == set(reference["flux_vae"]) and len(manifest.optional) == 244
    assert manifest.filename == "TransparentVAE.pth"
    assert Path(DEFAULT_MANIFEST).is_file() and "lib_layerdiffusion" in Path(DEFAULT_MANIFEST).parts


def test_full_size_pickle_converts_with_the_default_manifest_and_loads(tmp_path):
    """A TransparentVAE.pth as published (bf16, decoder + encoder + a few sd_vae tensors), 210 MB."""
    with open(FIXTURES / "manifest_flux_transparent_vae.json") as f:
        reference = json.load(f)
    state = OrderedDict()
    for section in ("flux_transparent_decoder", "flux_transparent_encoder"):
        state.update(seeded(reference[section]))
    for key, shape in list(reference["flux_vae"].items())[:3]:
        state[key] = torch.zeros(shape, dtype=torch.bfloat16)
    pth = write_pickle(tmp_path / "TransparentVAE.pth", state)
    decoder = load_transparent_decoder(pth)  # a .pth path: converted once, then the .safetensors is read
    out = tmp_path / "TransparentVAE.safetensors"
    assert out.is_file() and len(read_header(str(out))) == 538 + 18
    assert decoder.family is FLUX_LATENT and decoder.dtype == torch.float32
    got = decoder.model.state_dict()["latent_conv_in.weight"]
    assert got.shape == (64, 16, 1, 1) and torch.equal(got, state["decoder.latent_conv_in.weight"].float())
    del state
    pth.unlink()  # from now on only the .safetensors is used
    encoder = load_transparent_encoder(pth)
    assert encoder.family is FLUX_LATENT and encoder.model.state_dict()["blocks.16.weight"].shape == (16, 256, 3, 3)
    assert load_transparent_decoder(out).latent_channels == 16
