"""The FLUX.1 LayerDiffuse LoRA through a host's LoRA key mapping (lib_layerdiffusion/hosts/flux_lora.py), with a
small stand-in for the host: a FLUX-shaped model in BFL's layout (hidden size 4, 2 double and 3 single blocks), a key
map of the form Forge's model_lora_keys_unet builds (diffusers name -> parameter, or (parameter, (dim, start,
length)) for the fused projections) and a load_lora reading PEFT lora_A / lora_B pairs as Forge's does. The real
hosts are exercised by tests/rig/test_flux_lora_mapping.py.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lib_layerdiffusion.hosts import flux_lora

H, RANK, DOUBLE, SINGLE = 4, 2, 2, 3


def bfl_parameter_shapes() -> dict:
    shapes = {}
    for i in range(DOUBLE):
        p = f"diffusion_model.double_blocks.{i}."
        for s in ("img", "txt"):
            shapes[p + f"{s}_attn.qkv.weight"] = (3 * H, H)
            shapes[p + f"{s}_attn.proj.weight"] = (H, H)
            shapes[p + f"{s}_mlp.0.weight"] = (4 * H, H)
            shapes[p + f"{s}_mlp.2.weight"] = (H, 4 * H)
    for i in range(SINGLE):
        p = f"diffusion_model.single_blocks.{i}."
        shapes[p + "linear1.weight"] = (7 * H, H)
        shapes[p + "linear2.weight"] = (H, 5 * H)
    return shapes


def host_key_map(prefix: str = "transformer.") -> dict:
    """The form of comfyui_lora_collection utils.flux_to_diffusers + lora.model_lora_keys_unet, for this size."""
    m = {}
    for i in range(DOUBLE):
        d, b = f"{prefix}transformer_blocks.{i}.", f"diffusion_model.double_blocks.{i}."
        for j, (q, a) in enumerate((("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))):
            m[d + "attn." + q] = (b + "img_attn.qkv.weight", (0, j * H, H))
            m[d + "attn." + a] = (b + "txt_attn.qkv.weight", (0, j * H, H))
        m[d + "attn.to_out.0"] = b + "img_attn.proj.weight"
        m[d + "attn.to_add_out"] = b + "txt_attn.proj.weight"
        m[d + "ff.net.0.proj"] = b + "img_mlp.0.weight"
        m[d + "ff.net.2"] = b + "img_mlp.2.weight"
        m[d + "ff_context.net.0.proj"] = b + "txt_mlp.0.weight"
        m[d + "ff_context.net.2"] = b + "txt_mlp.2.weight"
    for i in range(SINGLE):
        d, b = f"{prefix}single_transformer_blocks.{i}.", f"diffusion_model.single_blocks.{i}."
        for j, q in enumerate(("to_q", "to_k", "to_v")):
            m[d + "attn." + q] = (b + "linear1.weight", (0, j * H, H))
        m[d + "proj_mlp"] = (b + "linear1.weight", (0, 3 * H, 4 * H))
        m[d + "proj_out"] = b + "linear2.weight"
    return m


def host_load_lora(lora, to_load):
    """The PEFT branch of the hosts' load_lora: ("lora", (up, down, alpha, mid, dora_scale)) per mapped module."""
    patches, loaded = {}, set()
    for x in to_load:
        up, down, alpha = f"{x}.lora_B.weight", f"{x}.lora_A.weight", f"{x}.alpha"
        if up in lora:
            a = None
            if alpha in lora:
                a = lora[alpha].item()
                loaded.add(alpha)
            patches[to_load[x]] = ("lora", (lora[up], lora[down], a, None, None))
            loaded.update((up, down))
    return patches, {k: v for k, v in lora.items() if k not in loaded}


def diffusers_linear_shapes() -> dict:
    """(out, in) of the diffusers FluxTransformer2DModel linears in the target set, at this size."""
    shapes = {}
    for i in range(DOUBLE):
        d = f"transformer_blocks.{i}."
        for t in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            shapes[d + "attn." + t] = (H, H)
        for f in ("ff", "ff_context"):
            shapes[d + f + ".net.0.proj"] = (4 * H, H)
            shapes[d + f + ".net.2"] = (H, 4 * H)
    for i in range(SINGLE):
        d = f"single_transformer_blocks.{i}."
        for t in ("to_q", "to_k", "to_v"):
            shapes[d + "attn." + t] = (H, H)
        shapes[d + "proj_mlp"] = (4 * H, H)
        shapes[d + "proj_out"] = (H, 5 * H)
    return shapes


def peft_lora(prefix: str = "transformer.", seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (n_out, n_in) in diffusers_linear_shapes().items():
        sd[f"{prefix}{name}.lora_A.weight"] = torch.randn(RANK, n_in, generator=g)
        sd[f"{prefix}{name}.lora_B.weight"] = torch.randn(n_out, RANK, generator=g)
    return sd


def merge(patches: dict, shapes: dict) -> dict:
    """Zero BFL weights plus every patch's up @ down on its rows (what the hosts' merge_lora_to_weight does)."""
    weights = {k: torch.zeros(s) for k, s in shapes.items()}
    for key, (kind, (up, down, alpha, _mid, _dora)) in patches.items():
        assert kind == "lora"
        param, offset = (key, None) if isinstance(key, str) else key[:2]
        w = weights[param] if offset is None else weights[param].narrow(*offset)
        scale = 1.0 if alpha is None else alpha / down.shape[0]
        w += scale * (up @ down)
    return weights


def test_the_target_set_covers_every_linear_of_the_blocks():
    names = flux_lora.peft_module_names(DOUBLE, SINGLE, prefix="")
    assert sorted(names) == sorted(diffusers_linear_shapes())
    full = flux_lora.peft_module_names()
    assert len(full) == 19 * 12 + 38 * 5 == 418
    assert "transformer.single_transformer_blocks.37.attn.to_k" in full  # seen in the port's users' logs


@pytest.mark.parametrize("prefix", ["transformer.", ""])
def test_every_key_lands_on_the_fused_rows_it_belongs_to(prefix):
    sd = peft_lora(prefix)
    shapes = bfl_parameter_shapes()
    result = flux_lora.lora_patches(sd, host_key_map(), host_load_lora, shapes)
    assert result.unmatched == {}
    assert len(result.patches) == len(diffusers_linear_shapes()) == len(sd) // 2

    # the host's patch values are passed on untouched, keyed as add_patches takes them
    q = result.patches[("diffusion_model.single_blocks.1.linear1.weight", (0, 0, H))]
    assert result.sources[("diffusion_model.single_blocks.1.linear1.weight", (0, 0, H))] == [
        f"{prefix}single_transformer_blocks.1.attn.to_q.lora_A.weight",
        f"{prefix}single_transformer_blocks.1.attn.to_q.lora_B.weight"]
    assert q[1][0] is sd[f"{prefix}single_transformer_blocks.1.attn.to_q.lora_B.weight"]
    assert q[1][1] is sd[f"{prefix}single_transformer_blocks.1.attn.to_q.lora_A.weight"]

    # merged, each fused parameter holds the diffusers modules' deltas in q | k | v | mlp order
    merged = merge(result.patches, shapes)

    def delta(name):
        return sd[f"{prefix}{name}.lora_B.weight"] @ sd[f"{prefix}{name}.lora_A.weight"]

    s = "single_transformer_blocks.2."
    expect = torch.cat([delta(s + "attn.to_q"), delta(s + "attn.to_k"), delta(s + "attn.to_v"), delta(s + "proj_mlp")])
    torch.testing.assert_close(merged["diffusion_model.single_blocks.2.linear1.weight"], expect)
    torch.testing.assert_close(merged["diffusion_model.single_blocks.2.linear2.weight"], delta(s + "proj_out"))
    d = "transformer_blocks.1.attn."
    torch.testing.assert_close(merged["diffusion_model.double_blocks.1.txt_attn.qkv.weight"],
                               torch.cat([delta(d + "add_q_proj"), delta(d + "add_k_proj"), delta(d + "add_v_proj")]))
    torch.testing.assert_close(merged["diffusion_model.double_blocks.1.img_mlp.2.weight"],
                               delta("transformer_blocks.1.ff.net.2"))


def test_alpha_is_read_by_the_host():
    sd = peft_lora()
    sd["transformer.transformer_blocks.0.attn.to_q.alpha"] = torch.tensor(1.0)
    result = flux_lora.lora_patches(sd, host_key_map(), host_load_lora, bfl_parameter_shapes())
    assert result.unmatched == {}
    assert result.patches[("diffusion_model.double_blocks.0.img_attn.qkv.weight", (0, 0, H))][1][2] == 1.0


def test_an_unknown_key_is_reported_by_its_name_in_the_file():
    sd = peft_lora(prefix="")
    sd["single_transformer_blocks.3.attn.to_q.lora_A.weight"] = torch.zeros(RANK, H)  # no block 3
    sd["single_transformer_blocks.3.attn.to_q.lora_B.weight"] = torch.zeros(H, RANK)
    sd["text_encoder.layers.0.q_proj.lora_A.weight"] = torch.zeros(RANK, H)
    result = flux_lora.lora_patches(sd, host_key_map(), host_load_lora, bfl_parameter_shapes())
    assert sorted(result.unmatched) == ["single_transformer_blocks.3.attn.to_q.lora_A.weight",
                                        "single_transformer_blocks.3.attn.to_q.lora_B.weight",
                                        "text_encoder.layers.0.q_proj.lora_A.weight"]
    assert all("no parameter" in why for why in result.unmatched.values())
    assert len(result.patches) == len(diffusers_linear_shapes())  # the rest still lands


def test_a_lora_of_the_wrong_shape_is_reported_and_left_out():
    sd = peft_lora()
    sd["transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight"] = torch.zeros(H, RANK)  # is 4H rows
    sd["transformer.transformer_blocks.1.ff.net.2.lora_A.weight"] = torch.zeros(RANK, H)  # takes 4H inputs
    result = flux_lora.lora_patches(sd, host_key_map(), host_load_lora, bfl_parameter_shapes())
    assert sorted(result.unmatched) == sorted(
        f"transformer.{m}.lora_{ab}.weight"
        for m in ("single_transformer_blocks.0.proj_mlp", "transformer_blocks.1.ff.net.2") for ab in "AB")
    why = result.unmatched["transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight"]
    assert "[4, 4]" in why and "[16, 4]" in why and "single_blocks.0.linear1.weight [0, 12, 16]" in why
    assert ("diffusion_model.single_blocks.0.linear1.weight", (0, 3 * H, 4 * H)) not in result.patches
    assert "diffusion_model.double_blocks.1.img_mlp.2.weight" not in result.patches
    assert len(result.patches) == len(diffusers_linear_shapes()) - 2


def test_a_parameter_the_model_lacks_or_rows_outside_it_are_reported():
    key_map = host_key_map()
    key_map["transformer.extra"] = "diffusion_model.guidance_in.in_layer.weight"  # e.g. schnell has no guidance_in
    key_map["transformer.transformer_blocks.0.attn.to_v"] = (
        "diffusion_model.double_blocks.0.img_attn.qkv.weight", (0, 3 * H, H))
    sd = peft_lora()
    sd["transformer.extra.lora_A.weight"] = torch.zeros(RANK, H)
    sd["transformer.extra.lora_B.weight"] = torch.zeros(H, RANK)
    result = flux_lora.lora_patches(sd, key_map, host_load_lora, bfl_parameter_shapes())
    assert "which the loaded model does not have" in result.unmatched["transformer.extra.lora_A.weight"]
    assert "outside" in result.unmatched["transformer.transformer_blocks.0.attn.to_v.lora_B.weight"]
    assert len(result.unmatched) == 4
    assert "diffusion_model.guidance_in.in_layer.weight" not in result.patches


def test_two_modules_on_the_same_rows_are_reported():
    key_map = host_key_map()
    key_map["lora_transformer_single_transformer_blocks_0_proj_out"] = key_map[
        "transformer.single_transformer_blocks.0.proj_out"]  # the OneTrainer alias of the same module
    sd = peft_lora()
    sd["lora_transformer_single_transformer_blocks_0_proj_out.lora_A.weight"] = torch.zeros(RANK, 5 * H)
    sd["lora_transformer_single_transformer_blocks_0_proj_out.lora_B.weight"] = torch.zeros(H, RANK)
    result = flux_lora.lora_patches(sd, key_map, host_load_lora, bfl_parameter_shapes())
    assert len(result.unmatched) == 4
    assert all("2 modules of the file land on diffusion_model.single_blocks.0.linear2.weight" in why
               for why in result.unmatched.values())
    assert "diffusion_model.single_blocks.0.linear2.weight" not in result.patches


def test_without_parameter_shapes_only_the_hosts_leftovers_are_reported():
    sd = peft_lora()
    sd["transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight"] = torch.zeros(H, RANK)
    sd["transformer.nothing.lora_A.weight"] = torch.zeros(RANK, H)
    result = flux_lora.lora_patches(sd, host_key_map(), host_load_lora)
    assert list(result.unmatched) == ["transformer.nothing.lora_A.weight"]
    shapes = dict.fromkeys(bfl_parameter_shapes())  # shapes unknown (packed weights): presence only
    assert list(flux_lora.lora_patches(sd, host_key_map(), host_load_lora, shapes).unmatched) == [
        "transformer.nothing.lora_A.weight"]


def test_parameter_shape_reads_the_real_shape_of_packed_weights():
    assert flux_lora.parameter_shape(torch.zeros(3, 2)) == (3, 2)
    packed = SimpleNamespace(shape=(6, 1), quant_state=SimpleNamespace(shape=torch.Size([3, 4])))
    assert flux_lora.parameter_shape(packed) == (3, 4)
    assert flux_lora.parameter_shape(SimpleNamespace(shape=(6, 1), quant_state=object())) is None


def test_module_name_and_prefix():
    assert flux_lora.module_name("transformer.a.b.lora_A.weight") == "transformer.a.b"
    assert flux_lora.module_name("x.alpha") == "x"
    assert flux_lora.module_name("x.lora_up.weight") == "x"
    assert flux_lora.module_name("plain.weight") == "plain.weight"
    sd, names = flux_lora.with_peft_prefix({"a.lora_A.weight": 1})
    assert sd == {"transformer.a.lora_A.weight": 1} and names == {"transformer.a.lora_A.weight": "a.lora_A.weight"}
    mixed = {"transformer.a.lora_A.weight": 1, "b.lora_A.weight": 2}  # diffusers then takes the prefixed ones only
    assert flux_lora.with_peft_prefix(mixed)[0] == mixed


def test_not_added_and_the_message():
    patches = {"a": 1, ("b", (0, 0, 4)): 2, "c": 3}
    assert flux_lora.not_added(patches, {"a", ("b", (0, 0, 4))}) == ["c"]
    assert flux_lora.not_added(patches, ["c"]) == ["a", ("b", (0, 0, 4))]
    msg = flux_lora.unmatched_message("layerlora.safetensors", {f"k{i}": "why" for i in range(10)}, 836, limit=3)
    assert "10 of the 836 keys of layerlora.safetensors" in msg and "k0 (why)" in msg and "and 7 more" in msg
    assert "k3" not in msg


class FakeKModel(torch.nn.Module):
    """KModel's shape: .diffusion_model holding the BFL-layout parameters (on the meta device)."""

    def __init__(self):
        super().__init__()
        self.diffusion_model = torch.nn.Module()
        for name, shape in bfl_parameter_shapes().items():
            module = self.diffusion_model
            parts = name.split(".")[1:]
            for p in parts[:-1]:
                if not hasattr(module, p):
                    module.add_module(p, torch.nn.Module())
                module = getattr(module, p)
            module.register_parameter(parts[-1], torch.nn.Parameter(torch.empty(shape, device="meta")))


@pytest.mark.parametrize("bridge", [flux_lora.forge_flux_lora_patches, flux_lora.neo_flux_lora_patches])
def test_the_host_functions_use_the_patchers_model(bridge):
    calls = []
    shared_default = {"stale": "diffusion_model.gone.weight"}

    def model_lora_keys_unet(model, key_map=shared_default):
        calls.append((model, key_map))
        key_map.update(host_key_map())
        return key_map

    unet = SimpleNamespace(model=FakeKModel())
    lora_module = SimpleNamespace(model_lora_keys_unet=model_lora_keys_unet, load_lora=host_load_lora)
    sd = peft_lora()
    sd["transformer.single_transformer_blocks.0.proj_out.lora_A.weight"] = torch.zeros(RANK, H)  # wrong in
    result = bridge(unet, sd, lora_module)
    assert calls[0][0] is unet.model and calls[0][1] == host_key_map() and "stale" not in calls[0][1]
    assert sorted(result.unmatched) == [f"transformer.single_transformer_blocks.0.proj_out.lora_{ab}.weight"
                                        for ab in "AB"]
    assert len(result.patches) == len(diffusers_linear_shapes()) - 1


class FakePatcher:
    """ModelPatcher.add_patches's contract: takes the patches whose parameter the model has, returns their keys."""

    def __init__(self, neo: bool, missing: str = ""):
        self.model, self.neo, self.missing, self.calls = FakeKModel(), neo, missing, []

    def _add(self, patches, strength_patch, strength_model, filename, online_mode):
        self.calls.append((filename, strength_patch, strength_model, online_mode, len(patches)))
        taken = [k for k in patches if (k if isinstance(k, str) else k[0]) != self.missing]
        return taken if self.neo else set(taken)


class ForgePatcher(FakePatcher):
    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        return self._add(patches, strength_patch, strength_model, filename, online_mode)


class NeoPatcher(FakePatcher):
    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0, *, filename=None, online_mode=None):
        names = [k if isinstance(k, str) else k[0] for k in patches]
        assert len(names) == len(set(names)), "Neo's add_patches keeps one patch per parameter (base.py:437)"
        return self._add(patches, strength_patch, strength_model, filename, online_mode)


@pytest.mark.parametrize("neo", [False, True])
def test_adding_reports_what_the_patcher_did_not_take(neo):
    lora_module = SimpleNamespace(model_lora_keys_unet=lambda model, key_map: {**key_map, **host_key_map()},
                                  load_lora=host_load_lora)
    sd = peft_lora()
    sd["transformer.nothing.lora_A.weight"] = torch.zeros(RANK, H)
    missing = "diffusion_model.double_blocks.0.img_attn.qkv.weight"  # e.g. a parameter add_patches does not list
    unet = (NeoPatcher if neo else ForgePatcher)(neo, missing)
    if neo:
        unmatched = flux_lora.neo_add_flux_lora(unet, "layerlora.safetensors", sd, 0.5, lora_module)
        # linear1 takes 4 patches (q, k, v, mlp rows), so 4 calls, each with one patch per parameter
        assert [c[0] for c in unet.calls] == ["layerlora.safetensors"] + [f"layerlora.safetensors#{i}"
                                                                            for i in (2, 3, 4)]
        assert sum(c[4] for c in unet.calls) == len(diffusers_linear_shapes())
        assert {c[1:4] for c in unet.calls} == {(0.5, 1.0, False)}  # plain weights: merged, not online
    else:
        unmatched = flux_lora.forge_add_flux_lora(unet, "layerlora.safetensors", sd, 0.5, lora_module)
        assert unet.calls == [("layerlora.safetensors", 0.5, 1.0, False, len(diffusers_linear_shapes()))]
    expect = {"transformer.nothing.lora_A.weight"} | {
        f"transformer.transformer_blocks.0.attn.{m}.lora_{ab}.weight" for m in ("to_q", "to_k", "to_v") for ab in "AB"}
    assert set(unmatched) == expect
    assert unmatched["transformer.transformer_blocks.0.attn.to_k.lora_A.weight"] == (
        f"the host did not take its patch on {missing}")
    assert list(unmatched) == sorted(unmatched)


def test_one_patch_per_parameter_keeps_order_and_every_patch():
    patches = {("w", (0, 0, 4)): 1, "v": 2, ("w", (0, 4, 4)): 3, ("w", (0, 8, 4)): 4, ("u", (0, 0, 4)): 5}
    groups = flux_lora.one_patch_per_parameter(patches)
    assert groups == [{("w", (0, 0, 4)): 1, "v": 2, ("u", (0, 0, 4)): 5}, {("w", (0, 4, 4)): 3},
                      {("w", (0, 8, 4)): 4}]


def test_quantisation_reads_what_the_hosts_lora_loader_reads():
    class Q4_K:  # the name of the host's quant class is what the user sees
        pass

    gguf = torch.nn.Parameter(torch.zeros(2, 144, dtype=torch.uint8), requires_grad=False)
    gguf.gguf_cls = Q4_K
    assert flux_lora.quantisation(gguf) == "GGUF Q4_K"
    f16 = torch.nn.Parameter(torch.zeros(4, 4))
    f16.gguf_cls = None  # a GGUF file's F16 / F32 tensor
    assert flux_lora.quantisation(f16) is None and not flux_lora.undecodable(f16)
    nf4 = SimpleNamespace(bnb_quantized=True, quant_type="nf4")
    assert flux_lora.quantisation(nf4) == "bitsandbytes nf4"
    assert flux_lora.quantisation(torch.zeros(3)) is None
    assert flux_lora.online_mode({"a": "GGUF Q8_0"}) and not flux_lora.online_mode({})


def test_a_gguf_type_the_host_cannot_dequantise_is_refused_with_its_weights():
    class Packed(torch.nn.Parameter):  # ParameterGGUF's form: the real shape over packed data
        @property
        def shape(self):
            return torch.Size([8, 256])

    iq = Packed(torch.zeros(8, 66, dtype=torch.uint8), requires_grad=False)
    iq.gguf_cls = None  # e.g. IQ2_XS: not in operations_gguf.py quants_mapping
    params = {"diffusion_model.single_blocks.0.linear2.weight": iq, "b": torch.zeros(8, 256)}
    assert flux_lora.undecodable(iq)
    flux_lora.check_decodable({"b": 1}, params)
    with pytest.raises(flux_lora.UnsupportedModelError, match=r"\[LayerDiffuse\] 1 of the FLUX.1 weights .* GGUF "
                                                              r"quantisation this Forge cannot dequantise .*"
                                                              r"single_blocks.0.linear2.weight"):
        flux_lora.check_decodable({"diffusion_model.single_blocks.0.linear2.weight": 1}, params)
