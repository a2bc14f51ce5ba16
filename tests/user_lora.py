"""A user's LoRA (`<lora:name:w>`) for the fake hosts' tiny SD1.5 UNets: one low-rank delta on a layer of each
kind a real LoRA reaches (self-attention, cross-attention, feed-forward, conv), at SD1.5's module names, and what
each of those layers computes as the UNet would call it. The SD1.5 attention-sharing units replace the modules
holding the attention layers, so these tell whether a LoRA still reaches the layers under them."""
from __future__ import annotations

import torch

BLOCK_A = "input_blocks.1.1.transformer_blocks.0"
BLOCK_B = "middle_block.1.transformer_blocks.0"
ATTENTION_LAYERS = (f"{BLOCK_A}.attn1.to_q", f"{BLOCK_A}.attn1.to_out.0", f"{BLOCK_B}.attn2.to_k",
                    f"{BLOCK_B}.attn2.to_v")
FF_LAYER = f"{BLOCK_A}.ff.net.2"
CONV_LAYER = "input_blocks.0.0"  # conv_in (lora_unet_conv_in)
LAYERS = ATTENTION_LAYERS + (FF_LAYER, CONV_LAYER)


def lora_deltas(diffusion_model: torch.nn.Module, layers=LAYERS, rank: int = 2, seed: int = 7) -> dict:
    """{'diffusion_model.<layer>.weight': (up, down)} shaped as a kohya file's lora_up / lora_down (a conv's down is
    (rank, in, k, k), its up (out, rank, 1, 1))."""
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for name in layers:
        weight = diffusion_model.get_submodule(name).weight
        if weight.ndim == 4:
            up = torch.randn(weight.shape[0], rank, 1, 1, generator=gen)
            down = torch.randn(rank, *weight.shape[1:], generator=gen)
        else:
            up = torch.randn(weight.shape[0], rank, generator=gen)
            down = torch.randn(rank, weight.shape[1], generator=gen)
        deltas[f"diffusion_model.{name}.weight"] = (up * 0.5, down * 0.5)
    return deltas


def weights(diffusion_model: torch.nn.Module) -> dict:
    """A copy of every parameter by name (what must come back unchanged after the request)."""
    return {k: v.detach().clone() for k, v in diffusion_model.state_dict().items()}


def layer_outputs(diffusion_model: torch.nn.Module, frames: int, transformer_options: dict) -> dict:
    """What the UNet computes at each patched layer, as it would call the module there now: the whole attention
    module (the unit standing in for it, when installed) for the attention layers, the layer itself for ff and
    conv. `frames` rows of 64 tokens (an 8×8 latent), context of 77 tokens for cross-attention."""
    gen = torch.Generator().manual_seed(3)
    outputs = {}
    with torch.no_grad():
        for name in ATTENTION_LAYERS:
            attention_name = name.split(".to_")[0]
            attention = diffusion_model.get_submodule(attention_name)
            shape_of = getattr(attention, "original", attention)  # the sizes, whatever stands in for it
            x = torch.randn(frames, 64, shape_of.to_q.in_features, generator=gen)
            context = None
            if attention_name.endswith("attn2"):
                context = torch.randn(frames, 77, shape_of.to_k.in_features, generator=gen)
            outputs[name] = attention(x, context=context, transformer_options=dict(transformer_options))
        ff = diffusion_model.get_submodule(FF_LAYER)
        outputs[FF_LAYER] = ff(torch.randn(frames, 64, ff.in_features, generator=gen))
        conv = diffusion_model.get_submodule(CONV_LAYER)
        outputs[CONV_LAYER] = conv(torch.randn(frames, conv.in_channels, 8, 8, generator=gen))
    return outputs


def differing(a: dict, b: dict) -> list[str]:
    """The layers whose outputs differ between two runs."""
    return [name for name in a if not torch.allclose(a[name], b[name])]
