"""Mirrors backend/patcher/vae.py VAE (Forge Neo 6e1e0d5; ComfyUI v0.3.64 comfy/sd.py), the image (non-Wan) path:
encode / decode in batches through first_stage_model, the tiled fallbacks (memory_management.VAE_ALWAYS_TILED or
out of memory), and Neo's clone(), which leaves out upscale_ratio, output_channels, latent_dim and the index
formulas (so a tiled decode on a clone fails)."""
import itertools

import torch

from backend import memory_management
from backend.patcher.base import ModelPatcher


@torch.inference_mode()
def tiled_scale_multidim(samples, function, tile=(64, 64), overlap=8, upscale_amount=4, out_channels=3,
                         output_device="cpu", downscale=False, index_formulas=None):  # vae.py:12-13
    dims = len(tile)
    if not (isinstance(upscale_amount, (tuple, list))):
        upscale_amount = [upscale_amount] * dims
    if not (isinstance(overlap, (tuple, list))):
        overlap = [overlap] * dims
    if index_formulas is None:
        index_formulas = upscale_amount
    if not (isinstance(index_formulas, (tuple, list))):
        index_formulas = [index_formulas] * dims

    def get_upscale(dim, val):
        up = upscale_amount[dim]
        return up(val) if callable(up) else up * val

    def get_downscale(dim, val):
        up = upscale_amount[dim]
        return up(val) if callable(up) else val / up

    def get_upscale_pos(dim, val):
        up = index_formulas[dim]
        return up(val) if callable(up) else up * val

    def get_downscale_pos(dim, val):
        up = index_formulas[dim]
        return up(val) if callable(up) else val / up

    if downscale:
        get_scale, get_pos = get_downscale, get_downscale_pos
    else:
        get_scale, get_pos = get_upscale, get_upscale_pos

    def mult_list_upscale(a):
        return [round(get_scale(i, a[i])) for i in range(len(a))]

    output = torch.empty([samples.shape[0], out_channels] + mult_list_upscale(samples.shape[2:]), device=output_device)

    for b in range(samples.shape[0]):
        s = samples[b:b + 1]
        if all(s.shape[d + 2] <= tile[d] for d in range(dims)):
            output[b:b + 1] = function(s).to(output_device)
            continue
        out = torch.zeros([s.shape[0], out_channels] + mult_list_upscale(s.shape[2:]), device=output_device)
        out_div = torch.zeros([s.shape[0], out_channels] + mult_list_upscale(s.shape[2:]), device=output_device)
        positions = [range(0, s.shape[d + 2] - overlap[d], tile[d] - overlap[d]) if s.shape[d + 2] > tile[d] else [0] for d in range(dims)]
        for it in itertools.product(*positions):
            s_in = s
            upscaled = []
            for d in range(dims):
                pos = max(0, min(s.shape[d + 2] - overlap[d], it[d]))
                length = min(tile[d], s.shape[d + 2] - pos)
                s_in = s_in.narrow(d + 2, pos, length)
                upscaled.append(round(get_pos(d, pos)))
            ps = function(s_in).to(output_device)
            mask = torch.ones_like(ps)
            for d in range(2, dims + 2):
                feather = round(get_scale(d - 2, overlap[d - 2]))
                if feather >= mask.shape[d]:
                    continue
                for t in range(feather):
                    a = (t + 1) / feather
                    mask.narrow(d, t, 1).mul_(a)
                    mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(a)
            o = out
            o_d = out_div
            for d in range(dims):
                o = o.narrow(d + 2, upscaled[d], mask.shape[d + 2])
                o_d = o_d.narrow(d + 2, upscaled[d], mask.shape[d + 2])
            o.add_(ps * mask)
            o_d.add_(mask)
        output[b:b + 1] = out / out_div
    return output


def tiled_scale(samples, function, tile_x=64, tile_y=64, overlap=8, upscale_amount=4, out_channels=3,
                output_device="cpu"):  # vae.py:119
    return tiled_scale_multidim(samples, function, (tile_y, tile_x), overlap=overlap, upscale_amount=upscale_amount,
                                out_channels=out_channels, output_device=output_device)


class VAE:  # vae.py:123
    def __init__(self, model=None, device=None, dtype=None, no_init=False, *, is_wan=False, is_flux2=False):
        if no_init:
            return
        self.upscale_ratio = 8  # vae.py:129
        self.upscale_index_formula = None
        self.downscale_ratio = 8
        self.downscale_index_formula = None
        self.latent_dim = 2
        self.latent_channels = int(model.config.latent_channels)
        self.memory_used_encode = lambda shape, dtype: (1767 * shape[2] * shape[3]) * memory_management.dtype_size(dtype)
        self.memory_used_decode = lambda shape, dtype: (2178 * shape[2] * shape[3] * 64) * memory_management.dtype_size(dtype)
        self.output_channels = 3  # vae.py:154
        self.first_stage_model = model.eval()
        self.device = device or memory_management.vae_device()
        offload_device = memory_management.vae_offload_device()
        self.vae_dtype = dtype or memory_management.vae_dtype()
        self.first_stage_model.to(self.vae_dtype)
        self.output_device = memory_management.intermediate_device()
        self.patcher = ModelPatcher(self.first_stage_model, load_device=self.device, offload_device=offload_device)
        self.is_wan = is_wan

    def clone(self):  # vae.py:167 — as Neo's: no upscale_ratio, output_channels, latent_dim, index formulas
        n = VAE(no_init=True)
        n.patcher = self.patcher.clone()
        n.memory_used_encode = self.memory_used_encode
        n.memory_used_decode = self.memory_used_decode
        n.downscale_ratio = self.downscale_ratio
        n.latent_channels = self.latent_channels
        n.first_stage_model = self.first_stage_model
        n.device = self.device
        n.vae_dtype = self.vae_dtype
        n.output_device = self.output_device
        n.is_wan = self.is_wan
        return n

    def decode_tiled_(self, samples, tile_x=64, tile_y=64, overlap=16):  # vae.py:181
        decode_fn = lambda a: self.first_stage_model.decode(a.to(self.vae_dtype).to(self.device)).float()
        return self.process_output((tiled_scale(samples, decode_fn, tile_x // 2, tile_y * 2, overlap, upscale_amount=self.upscale_ratio, output_device=self.output_device) + tiled_scale(samples, decode_fn, tile_x * 2, tile_y // 2, overlap, upscale_amount=self.upscale_ratio, output_device=self.output_device) + tiled_scale(samples, decode_fn, tile_x, tile_y, overlap, upscale_amount=self.upscale_ratio, output_device=self.output_device)) / 3.0)

    def encode_tiled_(self, pixel_samples, tile_x=512, tile_y=512, overlap=64):  # vae.py:190
        encode_fn = lambda a: self.first_stage_model.encode((self.process_input(a)).to(self.vae_dtype).to(self.device)).float()
        samples = tiled_scale(pixel_samples, encode_fn, tile_x, tile_y, overlap, upscale_amount=(1 / self.downscale_ratio), out_channels=self.latent_channels, output_device=self.output_device)
        samples += tiled_scale(pixel_samples, encode_fn, tile_x * 2, tile_y // 2, overlap, upscale_amount=(1 / self.downscale_ratio), out_channels=self.latent_channels, output_device=self.output_device)
        samples += tiled_scale(pixel_samples, encode_fn, tile_x // 2, tile_y * 2, overlap, upscale_amount=(1 / self.downscale_ratio), out_channels=self.latent_channels, output_device=self.output_device)
        samples /= 3.0
        return samples

    def decode(self, samples_in):  # vae.py:202 (B, C, h, w) raw latent → (B, 8h, 8w, 3) in [0, 1]
        if memory_management.VAE_ALWAYS_TILED:
            return self.decode_tiled(samples_in).to(self.output_device)
        pixel_samples = None
        memory_used = self.memory_used_decode(samples_in.shape, self.vae_dtype)
        memory_management.load_models_gpu([self.patcher], memory_required=memory_used)
        free_memory = memory_management.get_free_memory(self.device)
        batch_number = max(1, int(free_memory / memory_used))
        for x in range(0, samples_in.shape[0], batch_number):
            samples = samples_in[x:x + batch_number].to(self.vae_dtype).to(self.device)
            out = self.process_output(self.first_stage_model.decode(samples).to(self.output_device).float())
            if pixel_samples is None:
                pixel_samples = torch.empty((samples_in.shape[0],) + tuple(out.shape[1:]), device=self.output_device)
            pixel_samples[x:x + batch_number] = out
        return pixel_samples.to(self.output_device).movedim(1, -1)

    def decode_tiled(self, samples, tile_x=64, tile_y=64, overlap=16):  # vae.py:233
        memory_used = self.memory_used_decode(samples.shape, self.vae_dtype)
        memory_management.load_models_gpu([self.patcher], memory_required=memory_used)
        output = self.decode_tiled_(samples, tile_x=tile_x, tile_y=tile_y, overlap=overlap)
        return output.movedim(1, -1)

    def encode(self, pixel_samples):  # vae.py:251 (B, H, W, 3) in [0, 1] → raw latent (B, C, H/8, W/8)
        if memory_management.VAE_ALWAYS_TILED:
            return self.encode_tiled(pixel_samples)
        _samples = pixel_samples.movedim(-1, 1)
        memory_used = self.memory_used_encode(_samples.shape, self.vae_dtype)
        memory_management.load_models_gpu([self.patcher], memory_required=memory_used)
        free_memory = memory_management.get_free_memory(self.device)
        batch_number = max(1, int(free_memory / max(1, memory_used)))
        samples = None
        for x in range(0, _samples.shape[0], batch_number):
            pixels_in = self.process_input(_samples[x:x + batch_number]).to(self.vae_dtype).to(self.device)
            out = self.first_stage_model.encode(pixels_in).to(self.output_device).float()
            if samples is None:
                samples = torch.empty((_samples.shape[0],) + tuple(out.shape[1:]), device=self.output_device)
            samples[x:x + batch_number] = out
        return samples

    def encode_tiled(self, pixel_samples, tile_x=512, tile_y=512, overlap=64):  # vae.py:283
        pixel_samples = pixel_samples.movedim(-1, 1)
        memory_used = self.memory_used_encode(pixel_samples.shape, self.vae_dtype)
        memory_management.load_models_gpu([self.patcher], memory_required=memory_used)
        return self.encode_tiled_(pixel_samples, tile_x=tile_x, tile_y=tile_y, overlap=overlap)

    def process_input(self, image):  # vae.py:306
        return image * 2.0 - 1.0

    def process_output(self, image):  # vae.py:309
        return torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
