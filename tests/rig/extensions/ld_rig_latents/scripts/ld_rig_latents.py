"""Rig-only extension (never shipped): logs, without changing anything, the latents a generation starts from and
ends with, for tests/rig/flux_matrix.py to compare with what LayerDiffuse logs at the init image's encode.

    [Observe] init latent (B, C, H, W) mean M std S; latent format scale F shift T   (img2img, before sampling)
    [Observe] sampled latent (B, C, H, W) mean M std S                               (after sampling, any request)

p.init_latent is what the host's img2img samples from: `process_in` of the VAE's encode (Forge's backend/nn/vae.py
IntegratedAutoencoderKL.process_in: (latent - shift_factor) * scaling_factor).
"""
from modules import scripts


def _stats(t) -> str:
    t = t.detach().float()
    return f"{tuple(t.shape)} mean {t.mean().item():.6f} std {t.std().item():.6f}"


class LDRigLatents(scripts.Script):
    def title(self):
        return "LD rig latents"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def process_before_every_sampling(self, p, *args, **kwargs):
        init = getattr(p, "init_latent", None)
        if init is None:
            return
        vae = p.sd_model.forge_objects.vae
        model = getattr(vae, "layerdiffuse_unregulated", vae).first_stage_model
        print(f"[Observe] init latent {_stats(init)}; latent format scale "
              f"{getattr(model, 'scaling_factor', float('nan'))} shift {getattr(model, 'shift_factor', 0.0)}",
              flush=True)

    def post_sample(self, p, ps, *args):
        print(f"[Observe] sampled latent {_stats(ps.samples)}", flush=True)
