"""Write random-weight LoRAs in kohya's (sd-scripts) format for the rig's random checkpoints, covering every
kind of UNet layer a user's LoRA touches: self-attention (attn1 to_q/to_k/to_v/to_out.0), cross-attention (attn2),
feed-forward (ff.net.0.proj, ff.net.2) and the ResBlocks' convolutions (in_layers.2 / out_layers.3, a LoCon's
conv1 / conv2) of every block, plus conv_in.

    python tests/rig/make_lora.py --checkpoint RIG/forge/models/Stable-diffusion/rig_sd15_random.safetensors \
        --out RIG/forge/models/Lora/rig_sd15_lora.safetensors --diffusers-names
    python tests/rig/make_lora.py --checkpoint .../rig_sdxl_base_random.safetensors --out .../rig_sdxl_lora.safetensors

Key names as sd-scripts writes them: SD1.5 LoRAs use the diffusers module names
(`lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`, `--diffusers-names`), SDXL LoRAs the
ldm ones (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`); each module has `.lora_down.weight`
(rank × in [× k × k]), `.lora_up.weight` (out × rank [× 1 × 1]) and `.alpha` (= rank: scale 1). The shapes come
from the checkpoint's header; each delta is scaled to a third of its weight's spread (read from a slice of the
weight), so the LoRA visibly changes the image without overflowing. Deterministic (seed + CRC-32 of the key).
Needs torch and safetensors (the rig's venv). Nothing here is a real LoRA: it only exercises the code paths.
"""
from __future__ import annotations

import argparse
import re
import zlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

PREFIX = "model.diffusion_model."
# ldm module suffixes a LoRA reaches, in a transformer block and a ResBlock
LAYER = re.compile(
    r"^(?P<block>(input_blocks|output_blocks)\.\d+|middle_block)\.(?P<idx>\d+)\."
    r"(?P<rest>transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))"
    r"|in_layers\.2|out_layers\.3)\.weight$")


def diffusers_name(ldm: str) -> str | None:
    """The diffusers module name of an SD1.5 ldm UNet module (channel_mult 1,2,4,4, two ResBlocks per level):
    input_blocks.{3i+j+1}.{0|1} = down_blocks.i.{resnets|attentions}.j, output_blocks.{3i+j} = up_blocks.i.…,
    middle_block.{0,1,2} = mid_block.resnets.0 / attentions.0 / resnets.1; in_layers.2 = conv1, out_layers.3 = conv2."""
    if ldm == "input_blocks.0.0":
        return "conv_in"
    m = re.match(r"^(input_blocks|output_blocks)\.(\d+)\.(\d)\.(.*)$", ldm)
    if m:
        container, n, idx, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        if container == "input_blocks":
            i, j = divmod(n - 1, 3)
            prefix = f"down_blocks.{i}"
        else:
            i, j = divmod(n, 3)
            prefix = f"up_blocks.{i}"
        if idx == "2":  # output_blocks' upsampler conv is not covered
            return None
    else:
        m = re.match(r"^middle_block\.(\d)\.(.*)$", ldm)
        if not m:
            return None
        idx, rest = m.group(1), m.group(2)
        prefix, j = "mid_block", {"0": 0, "1": 0, "2": 1}[idx]
        idx = "1" if idx == "1" else "0"
    kind = "attentions" if idx == "1" else "resnets"
    rest = rest.replace("in_layers.2", "conv1").replace("out_layers.3", "conv2")
    return f"{prefix}.{kind}.{j}.{rest}"


def lora_targets(header_keys, diffusers: bool) -> dict[str, str]:
    """{kohya module name: checkpoint weight key} for every covered layer the checkpoint has."""
    targets = {}
    for key in header_keys:
        if not key.startswith(PREFIX):
            continue
        ldm = key[len(PREFIX):]
        if not (LAYER.match(ldm) or ldm == "input_blocks.0.0.weight"):
            continue
        module = ldm[: -len(".weight")]
        name = diffusers_name(module) if diffusers else module
        if name is None:
            continue
        targets["lora_unet_" + name.replace(".", "_")] = key
    return targets


def make_lora(checkpoint: Path, diffusers: bool, rank: int = 4, seed: int = 1,
              only: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    out = {}
    with safe_open(str(checkpoint), framework="pt") as f:
        targets = lora_targets(f.keys(), diffusers)
        if only:  # e.g. ("attn1", "attn2"): the modules whose name has one of these parts
            targets = {n: k for n, k in targets.items() if any(f"_{part}_" in n for part in only)}
        for name, key in sorted(targets.items()):
            piece = f.get_slice(key)
            shape = piece.get_shape()
            spread = float(piece[:1].float().std()) or 0.02
            gen = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
            if len(shape) == 4:
                down = torch.randn(rank, shape[1], shape[2], shape[3], generator=gen)
                up = torch.randn(shape[0], rank, 1, 1, generator=gen)
            else:
                down = torch.randn(rank, shape[1], generator=gen)
                up = torch.randn(shape[0], rank, generator=gen)
            # up @ down has std sqrt(rank) * scale², whatever the fan-in
            scale = (spread / 3.0 / rank ** 0.5) ** 0.5
            out[f"{name}.lora_down.weight"] = (down * scale).to(torch.float16).contiguous()
            out[f"{name}.lora_up.weight"] = (up * scale).to(torch.float16).contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(rank), dtype=torch.float16)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--diffusers-names", action="store_true", help="SD1.5 kohya naming (down_blocks_…)")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--only", nargs="*", default=(), help="only modules with these name parts (attn1 attn2 ff)")
    a = ap.parse_args()
    state = make_lora(a.checkpoint, a.diffusers_names, a.rank, only=tuple(a.only))
    modules = [n[: -len(".alpha")] for n in state if n.endswith(".alpha")]
    kinds = {k: sum(1 for n in modules if f"_{k}_" in n) for k in ("attn1", "attn2", "ff")}
    kinds["conv"] = len(modules) - sum(kinds.values())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(a.out), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(a.rank),
                                           "ss_network_alpha": str(a.rank)})
    print(f"{a.out}: {len(state) // 3} modules ({kinds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
