"""Mirrors backend/diffusion_engine/base.py (Forge Neo 6e1e0d5): ForgeObjects and the engine's WebUI flags."""


class ForgeObjects:  # base.py:13
    def __init__(self, unet, clip, vae, clipvision):
        self.unet = unet
        self.clip = clip
        self.vae = vae
        self.clipvision = clipvision

    def shallow_copy(self):  # base.py:20
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class ForgeDiffusionEngine:  # base.py:24
    def __init__(self, is_inpaint=False):
        self.is_inpaint = is_inpaint  # base.py:29: estimated_config.inpaint_model()
        self.forge_objects = None
        self.forge_objects_original = None
        self.forge_objects_after_applying_lora = None
        self.tiling_enabled = False  # base.py:63 fix_for_webui_backward_compatibility
        self.is_sd1 = False
        self.is_sdxl = False
        self.is_wan = False

    def _set_objects(self, unet, vae):
        self.forge_objects = ForgeObjects(unet=unet, clip=None, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()

    def encode_first_stage(self, x):  # sd15.py:61 / sdxl.py:109
        sample = self.forge_objects.vae.encode(x.movedim(1, -1) * 0.5 + 0.5)
        sample = self.forge_objects.vae.first_stage_model.process_in(sample)
        return sample.to(x)

    def decode_first_stage(self, x):  # sd15.py:67 / sdxl.py:115
        sample = self.forge_objects.vae.first_stage_model.process_out(x)
        sample = self.forge_objects.vae.decode(sample).movedim(-1, 1) * 2.0 - 1.0
        return sample.to(x)
