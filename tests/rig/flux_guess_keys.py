"""The few FLUX.1 checkpoint keys huggingface_guess reads to tell FLUX.1 and its size, shared by the rig tools
(make_flux_weights.py, test_flux_lora_mapping.py). Standard library only at import."""
from __future__ import annotations


def guess_keys(cfg: dict) -> dict:
    """{checkpoint key: meta tensor} from Forge's diffusers config of the FLUX.1 transformer."""
    import torch
    head = cfg["attention_head_dim"]
    hidden = cfg["num_attention_heads"] * head
    p = "model.diffusion_model."
    sd = {}
    for i in range(cfg["num_layers"]):
        sd[f"{p}double_blocks.{i}.img_attn.norm.key_norm.scale"] = torch.empty(head, device="meta")
    for i in range(cfg["num_single_layers"]):
        sd[f"{p}single_blocks.{i}.norm.key_norm.scale"] = torch.empty(head, device="meta")
    sd[p + "img_in.weight"] = torch.empty(hidden, cfg["in_channels"], device="meta")
    sd[p + "txt_in.weight"] = torch.empty(hidden, cfg["joint_attention_dim"], device="meta")
    sd[p + "vector_in.in_layer.weight"] = torch.empty(hidden, cfg["pooled_projection_dim"], device="meta")
    if cfg.get("guidance_embeds"):
        sd[p + "guidance_in.in_layer.weight"] = torch.empty(hidden, 256, device="meta")
    return sd
