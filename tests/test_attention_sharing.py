"""SD1.5 attention sharing: units and control encoder against the reference figures, and strict file loading."""
from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from seeded_weights import seeded_array
from torch import nn

from lib_layerdiffusion.networks.attention_sharing import (
    SD15_ATTENTION_LAYER_NAMES,
    SD15_CONFIGS,
    AttentionSharingConfig,
    AttentionSharingModel,
    AttentionSharingUnit,
    ControlEncoder,
    check_layout,
    load_attention_sharing,
    sd15_attention_modules,
)
from lib_layerdiffusion.errors import InvalidArgumentError, ModelFileError

FIXTURES = Path(__file__).parent / "fixtures"
TOL = 1e-4

# SD1.5 channel width of each block holding a transformer; attn2's context is always 768 wide.
_SD15_WIDTHS = {
    "input_blocks.1": 320, "input_blocks.2": 320, "input_blocks.4": 640, "input_blocks.5": 640,
    "input_blocks.7": 1280, "input_blocks.8": 1280, "output_blocks.3": 1280, "output_blocks.4": 1280,
    "output_blocks.5": 1280, "output_blocks.6": 640, "output_blocks.7": 640, "output_blocks.8": 640,
    "output_blocks.9": 320, "output_blocks.10": 320, "output_blocks.11": 320, "middle_block": 1280,
}


class CrossAttention(nn.Module):
    """The shape of the host's attention module: to_q/k/v without bias, to_out = [Linear, Dropout]."""

    def __init__(self, query_dim: int, context_dim: int, heads: int = 8):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(query_dim, query_dim), nn.Dropout(0.0))


def _sd15_attention(name: str, scale: int = 1) -> CrossAttention:
    width = _SD15_WIDTHS[name.split(".1.transformer_blocks")[0]] // scale
    return CrossAttention(width, width if name.endswith("attn1") else 768 // scale, heads=8 // min(scale, 8))


def _seeded(shapes, prefix: str = "") -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(seeded_array(prefix + k, tuple(s))) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES / "sd15_attention_sharing.npz") as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture(scope="module")
def manifest():
    with open(FIXTURES / "manifest_sd15_attention_sharing.json") as f:
        return json.load(f)


# ---- numerics against the reference -------------------------------------------------------------------------

# unit name -> (section, layer index, context width, frames, control)
_UNITS = {
    "f2_ctrl_attn2": ("sd15_fg2bg", 5, 768, 2, True),
    "f3_attn1": ("sd15_joint", 4, 640, 3, False),
}


@functools.cache
def _reference_weights(name: str) -> tuple[dict, dict]:
    """(wrapped attention's weights, the unit's own weights), seeded as the reference did."""
    with open(FIXTURES / "manifest_sd15_attention_sharing.json") as f:
        section = json.load(f)[_UNITS[name][0]]
    context_dim = _UNITS[name][2]
    org = {"to_q.weight": (640, 640), "to_k.weight": (640, context_dim), "to_v.weight": (640, context_dim),
           "to_out.0.weight": (640, 640), "to_out.0.bias": (640,)}
    prefix = f"hookers.layers.{_UNITS[name][1]}."
    local = {k[len(prefix):]: s for k, s in section.items() if k.startswith(prefix)}
    return _seeded(org, prefix="org."), _seeded(local)


def _reference_unit(name: str) -> AttentionSharingUnit:
    _, _, context_dim, frames, control = _UNITS[name]
    org_weights, unit_weights = _reference_weights(name)
    with torch.device("meta"):  # skip random init: every tensor is assigned below
        org = CrossAttention(640, context_dim)
        unit = AttentionSharingUnit(org, frames=frames, use_control=control, rank=256)
    org.load_state_dict(org_weights, strict=True, assign=True)
    unit.load_state_dict(unit_weights, strict=True, assign=True)
    return unit


def _reference_call(name: str, unit: AttentionSharingUnit, ref) -> torch.Tensor:
    frames = unit.frames
    options = {"cond_mark": ref[f"{name}_cond_mark"]}
    if f"{name}_cond_overwrite_0" in ref:
        options["cond_overwrite"] = [ref[f"{name}_cond_overwrite_{f}"] for f in range(frames)]
    if f"{name}_control_signal" in ref:
        unit.set_control_signals({16: ref[f"{name}_control_signal"]})
    with torch.no_grad():
        return unit(ref[f"{name}_h"], context=ref.get(f"{name}_context"), transformer_options=options)


@pytest.mark.parametrize("name", sorted(_UNITS))
def test_unit_matches_reference(name, ref, manifest):
    out = _reference_call(name, _reference_unit(name), ref)
    torch.testing.assert_close(out, ref[f"{name}_out"], atol=TOL, rtol=0)


def test_control_encoder_matches_reference(ref, manifest):
    prefix = "kwargs_encoder."
    shapes = {k[len(prefix):]: s for k, s in manifest["sd15_fg2bg"].items() if k.startswith(prefix)}
    tiny = [CrossAttention(16, 16, heads=2) for _ in range(2)]
    model = AttentionSharingModel(tiny, AttentionSharingConfig(frames=2, use_control=True, rank=4))
    model.kwargs_encoder.load_state_dict(_seeded(shapes), strict=True)
    model.set_control(ref["control_encoder_image01"])
    signals = model.units[1].control_signals
    assert sorted(signals) == [4, 16, 64, 256]
    for tokens, feature_map in signals.items():
        torch.testing.assert_close(feature_map, ref[f"control_encoder_out_{tokens}"], atol=TOL, rtol=0)


# ---- host-facing behaviour ----------------------------------------------------------------------------------

def test_conditional_mark_one_keeps_the_original_context(ref, manifest):
    unit = _reference_unit("f2_ctrl_attn2")
    unit.set_control_signals({16: ref["f2_ctrl_attn2_control_signal"]})
    h, ctx = ref["f2_ctrl_attn2_h"], ref["f2_ctrl_attn2_context"]
    overwrite = [ref["f2_ctrl_attn2_cond_overwrite_0"], None]
    with torch.no_grad():
        plain = unit(h, context=ctx, transformer_options={})
        uncond = unit(h, context=ctx, transformer_options={"cond_mark": torch.ones(2), "cond_overwrite": overwrite})
        cond = unit(h, context=ctx, transformer_options={"cond_mark": torch.zeros(2), "cond_overwrite": overwrite})
    torch.testing.assert_close(uncond, plain, atol=TOL, rtol=0)
    assert (cond - plain).abs().max() > 1e-2  # frame 0's prompt was replaced (and, through the frames, seen by 1)


def test_overwrite_of_another_prompt_length_is_repeated_exactly(ref, manifest):
    unit = _reference_unit("f2_ctrl_attn2")
    name = "f2_ctrl_attn2"
    expected = _reference_call(name, unit, ref)
    doubled = [torch.cat([ref[f"{name}_cond_overwrite_{f}"]] * 2, dim=1) for f in range(2)]  # 154 tokens
    with torch.no_grad():
        out = unit(ref[f"{name}_h"], context=ref[f"{name}_context"],
                   transformer_options={"cond_mark": ref[f"{name}_cond_mark"], "cond_overwrite": doubled})
    torch.testing.assert_close(out, expected, atol=TOL, rtol=0)


def test_unit_refuses_unusable_calls(ref, manifest):
    unit = _reference_unit("f2_ctrl_attn2")
    h, ctx = ref["f2_ctrl_attn2_h"], ref["f2_ctrl_attn2_context"]
    with pytest.raises(RuntimeError, match="control image"):
        unit(h, context=ctx)
    unit.set_control_signals({64: torch.zeros(1, 256, 8, 8)})
    with pytest.raises(InvalidArgumentError, match="16 tokens"):
        unit(h, context=ctx)
    with pytest.raises(InvalidArgumentError, match="multiple of 2"):
        unit(h[:1], context=ctx[:1])


def test_unit_installs_like_the_attention_it_replaces(ref, manifest):
    """A transformer block does `x += attn(norm(x), ...)`; after the swap it must get x + reference residual."""
    unit = _reference_unit("f3_attn1")
    block = nn.Module()
    block.attn1 = unit.original
    block.attn1 = unit  # what Forge's object patch does (setattr on the parent)
    norm_x = ref["f3_attn1_h"]
    x = norm_x + 0.5
    with torch.no_grad():
        y = x + block.attn1(norm_x, context=None, value=None, transformer_options={"cond_mark": torch.zeros(3)})
    torch.testing.assert_close(y, x + ref["f3_attn1_out"], atol=TOL, rtol=0)


def test_layer_names_and_lookup():
    names = SD15_ATTENTION_LAYER_NAMES
    assert len(names) == 32 and len(set(names)) == 32
    assert names[:2] == ("input_blocks.1.1.transformer_blocks.0.attn1", "input_blocks.1.1.transformer_blocks.0.attn2")
    assert names[12] == "output_blocks.3.1.transformer_blocks.0.attn1"
    assert names[31] == "middle_block.1.transformer_blocks.0.attn2"
    unet = nn.Module()
    for name in names:  # a module tree with just the attention layers at their SD1.5 paths
        parent = unet
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, nn.Identity())
    found = sd15_attention_modules(unet)
    assert [m is unet.get_submodule(n) for m, n in zip(found, names)] == [True] * 32
    with pytest.raises(InvalidArgumentError):
        sd15_attention_modules(nn.Module())


# ---- model files ---------------------------------------------------------------------------------------------

def _write_zero_safetensors(path: Path, shapes, dtype: str = "F16", itemsize: int = 2) -> None:
    """A valid safetensors file of zeros, written sparse: full-size files without writing ~1 GB."""
    header, offset = {}, 0
    for key, shape in sorted(shapes.items()):
        size = itemsize * int(np.prod(shape, dtype=np.int64))
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)


def _meta_sd15_modules(scale: int = 1) -> list[CrossAttention]:
    with torch.device("meta"):
        return [_sd15_attention(n, scale) for n in SD15_ATTENTION_LAYER_NAMES]


@pytest.mark.parametrize("section", sorted(SD15_CONFIGS))
def test_layout_matches_manifest(section, manifest):
    with torch.device("meta"):
        model = AttentionSharingModel(_meta_sd15_modules(), SD15_CONFIGS[section])
    assert model.expected_shapes() == {k: tuple(v) for k, v in manifest[section].items()}


@pytest.mark.parametrize("section", sorted(SD15_CONFIGS))
def test_full_size_file_loads_strictly(section, manifest, tmp_path):
    path = tmp_path / f"layer_{section}.safetensors"
    _write_zero_safetensors(path, manifest[section])
    model = load_attention_sharing(str(path), _meta_sd15_modules(), SD15_CONFIGS[section], dtype=torch.float16)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(p.dtype == torch.float16 for p in model.hookers.parameters())  # the units: as asked
    assert (model.kwargs_encoder is not None) == SD15_CONFIGS[section].use_control
    if model.kwargs_encoder is not None:  # the control encoder: float32 always, as the original runs it
        assert all(p.dtype == torch.float32 for p in model.kwargs_encoder.parameters())


def _tiny_layout():
    """SD1.5 topology at 1/32 width and rank 4: real seeded files in milliseconds. No control: its convolutions
    have a fixed 256 channels (the full-size files cover them)."""
    modules = [_sd15_attention(n, scale=32) for n in SD15_ATTENTION_LAYER_NAMES]
    config = AttentionSharingConfig(frames=2, use_control=False, rank=4)
    with torch.device("meta"):
        shapes = AttentionSharingModel(modules, config).expected_shapes()
    return modules, config, shapes


def test_seeded_file_round_trip(tmp_path):
    modules, config, shapes = _tiny_layout()
    weights = _seeded(shapes)
    path = tmp_path / "tiny.safetensors"
    save_file(weights, str(path))
    model = load_attention_sharing(str(path), modules, config)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert model.units[0].original is modules[0]  # the host's module is wrapped, not copied


@pytest.mark.parametrize("damage", ["renamed", "missing", "reshaped"])
def test_wrong_layout_raises_model_file_error(damage, tmp_path):
    modules, config, shapes = _tiny_layout()
    weights = _seeded(shapes)
    key = "hookers.layers.7.temporal_q.weight"
    if damage == "renamed":
        weights["hookers.layers.7.temporal_qq.weight"] = weights.pop(key)
    elif damage == "missing":
        del weights[key]
    else:
        weights[key] = weights[key][:, :-1].contiguous()
    path = tmp_path / "damaged.safetensors"
    save_file(weights, str(path))
    with pytest.raises(ModelFileError, match=r"temporal_q") as err:
        load_attention_sharing(str(path), modules, config)
    assert str(path) in str(err.value)
    model = AttentionSharingModel(modules, config)  # the in-memory path says the same
    with pytest.raises(ModelFileError, match=r"temporal_q"):
        model.load_checked(weights, "damaged.safetensors")


def test_file_for_another_method_is_refused(manifest, tmp_path):
    path = tmp_path / "layer_sd15_joint.safetensors"
    _write_zero_safetensors(path, manifest["sd15_joint"])
    with pytest.raises(ModelFileError, match="missing keys: hookers.layers.0.control_convs"):
        load_attention_sharing(str(path), _meta_sd15_modules(), SD15_CONFIGS["sd15_fg2bg"])


def test_check_layout_message_is_bounded():
    expected = {f"k{i}": (1,) for i in range(10)}
    with pytest.raises(ModelFileError, match=r"10 in all"):
        check_layout({}, expected, "f.safetensors")
    check_layout({"a": [2, 3]}, {"a": (2, 3)}, "f.safetensors")


def test_control_encoder_resolutions():
    with torch.no_grad():
        maps = ControlEncoder()(torch.zeros(1, 3, 64, 128))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        128: (1, 256, 8, 16), 32: (1, 256, 4, 8), 8: (1, 256, 2, 4), 2: (1, 256, 1, 2)}


def _tiny_control_state_dict(file_dtype: torch.dtype) -> tuple[list[CrossAttention], AttentionSharingConfig, dict]:
    """Two tiny units with control; the encoder seeded as the reference's (same names), stored in `file_dtype`."""
    modules = [CrossAttention(16, 16, heads=2) for _ in range(2)]
    config = AttentionSharingConfig(frames=2, use_control=True, rank=4)
    with torch.device("meta"):
        shapes = AttentionSharingModel(modules, config).expected_shapes()
    prefix = "kwargs_encoder."
    weights = {prefix + k: v for k, v in
               _seeded({k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}).items()}
    weights.update(_seeded({k: s for k, s in shapes.items() if not k.startswith(prefix)}))
    return modules, config, {k: v.to(file_dtype) for k, v in weights.items()}


@pytest.mark.parametrize("file_dtype", [torch.float32, torch.float16])
def test_half_units_keep_the_control_encoder_in_float32(ref, file_dtype):
    from lib_layerdiffusion.networks.attention_sharing import build_attention_sharing
    modules, config, weights = _tiny_control_state_dict(file_dtype)
    half = build_attention_sharing(weights, modules, config, "tiny.safetensors", dtype=torch.float16)
    full = build_attention_sharing(weights, modules, config, "tiny.safetensors", dtype=torch.float32)
    assert all(p.dtype == torch.float16 for p in half.hookers.parameters())
    assert all(p.dtype == torch.float32 for p in half.kwargs_encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(half.kwargs_encoder.state_dict().values(),
                                                 full.kwargs_encoder.state_dict().values()))
    half.set_control(ref["control_encoder_image01"])
    full.set_control(ref["control_encoder_image01"])
    signals = half.units[0].control_signals
    assert sorted(signals) == [4, 16, 64, 256]
    for tokens, feature_map in signals.items():
        assert feature_map.dtype == torch.float32  # float32 maps, bit for bit the float32 model's
        assert torch.equal(feature_map, full.units[0].control_signals[tokens])
        if file_dtype == torch.float32:  # the reference's weights exactly: its figures
            torch.testing.assert_close(feature_map, ref[f"control_encoder_out_{tokens}"], atol=TOL, rtol=0)
    # a half image still encodes in float32
    half.set_control(ref["control_encoder_image01"].half())
    assert all(m.dtype == torch.float32 for m in half.units[1].control_signals.values())
    # the half units take the float32 maps, cast to their activations, as the original's units do
    unit = half.units[0]
    x = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = unit(x.half(), context=None, transformer_options={"cond_mark": torch.zeros(2)})
        control = unit._control(x.half().unflatten(0, (-1, 2)).transpose(0, 1))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    convs = unit.control_convs[1]
    signal = unit.control_signals[16].half()  # the maps now set (from the half image)
    expected = convs[2](convs[1](convs[0](signal))).flatten(2).transpose(1, 2)
    assert control.dtype == torch.float16 and torch.equal(control[1], expected)
