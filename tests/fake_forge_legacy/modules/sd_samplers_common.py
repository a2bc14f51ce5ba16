"""modules/sd_samplers_common.py of both hosts, lines as (bfee03d8 / 3b56b268): decoding a latent batch and
encoding init images go through the model's decode_first_stage / encode_first_stage (modules_forge/forge_loader.py),
i.e. the UNet's latent format and sd_model.forge_objects.vae. "TAESD" decodes without the checkpoint's VAE (a
fixed linear map stands in for the TAESD network)."""
import torch

from modules.shared import opts

approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}  # :36 / :38


def samples_to_images_tensor(sample, approximation=None, model=None):  # :39 / :64
    if approximation == 3:  # :51 / :80 sd_vae_taesd.decoder_model()(sample) * 2 - 1: never the checkpoint's VAE
        return torch.tanh(sample[:, :3] * 0.5)
    return model.decode_first_stage(sample)  # :57 / :88


def decode_first_stage(model, x):  # :72 / :103
    approx_index = approximation_indexes.get(opts.sd_vae_decode_method, 0)
    return samples_to_images_tensor(x, approx_index, model)


def images_tensor_to_samples(image, approximation=None, model=None):  # :85 / :116 ('''image[0, 1] -> latent''')
    image = image * 2 - 1
    if len(image) > 1:  # one image at a time
        return torch.stack([model.get_first_stage_encoding(model.encode_first_stage(torch.unsqueeze(img, 0)))[0]
                            for img in image])
    return model.get_first_stage_encoding(model.encode_first_stage(image))
