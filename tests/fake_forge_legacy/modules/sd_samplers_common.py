"""modules/sd_samplers_common.py of both hosts, lines as (bfee03d8 / 3b56b268): decoding a latent batch and
encoding init images go through the model's decode_first_stage / encode_first_stage (modules_forge/forge_loader.py),
i.e. the UNet's latent format and sd_model.forge_objects.vae. Only the "Full" VAE is here."""
import torch

approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}  # :36 / :38


def decode_first_stage(model, x):  # :72 / :103 -> samples_to_images_tensor, model.decode_first_stage (:57 / :88)
    return model.decode_first_stage(x)


def images_tensor_to_samples(image, approximation=None, model=None):  # :85 / :116 ('''image[0, 1] -> latent''')
    image = image * 2 - 1
    if len(image) > 1:  # one image at a time
        return torch.stack([model.get_first_stage_encoding(model.encode_first_stage(torch.unsqueeze(img, 0)))[0]
                            for img in image])
    return model.get_first_stage_encoding(model.encode_first_stage(image))
