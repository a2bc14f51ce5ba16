"""Mirrors (Forge Neo 6e1e0d5) modules/sd_samplers_common.py:40 samples_to_images_tensor: approximation 0 ("Full")
decodes with the checkpoint's VAE through sd_model.decode_first_stage; 3 ("TAESD") with the TAESD decoder,
which never calls it (a fixed map stands in for that network here). Values in [-1, 1]."""
import torch


def samples_to_images_tensor(sample, approximation=None, model=None):
    if approximation == 3:  # sd_vae_taesd.decoder_model()(sample) * 2 - 1
        return torch.tanh(sample[:, :3] * 0.5)
    return model.decode_first_stage(sample)
