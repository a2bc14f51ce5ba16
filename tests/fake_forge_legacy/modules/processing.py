"""modules/processing.py of both hosts, lines as (bfee03d8 / 3b56b268), for what LayerDiffuse meets: the
processing objects, create_infotext, Processed.js, decode_latent_batch and the order of process_images_inner
(no hires fix, no inpainting mask, no face restoration, no colour correction). The sampler is a stand-in
(StableDiffusionProcessing.run_sampler).

What differs: bfee03d8 has no latents_after_sampling / pixels_after_sampling, its create_infotext writes a
callable in extra_generation_params as text (its repr), and its Processed.js() is a plain json.dumps, which raises
on a callable (the API answers 500); 3b56b268 calls callables per image in create_infotext, dumps them as null
and calls ScriptRunner.before_process_init_images from the img2img init."""
import json

import numpy as np
import torch
from PIL import Image

import fake_host
from modules import images, scripts
from modules.sd_samplers_common import approximation_indexes, decode_first_stage, images_tensor_to_samples
from modules.shared import opts, state
from modules_forge.forge_sampler import forge_sample, sampling_prepare

REFORGE = fake_host.is_reforge()


def quote(text):  # modules/infotext_utils.py:56 (both)
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def apply_overlay(image, paste_loc, overlay):  # :77 / :80 (only the no-overlay case is used here)
    if overlay is None:
        return image, image.copy()
    raise NotImplementedError("inpainting overlays are not in this fake")


class ImageRNG:  # modules/rng.py:105 (both): one noise per seed, next() (:159) for the whole batch
    def __init__(self, shape, seeds):
        self.shape, self.seeds = shape, seeds

    def next(self):
        return torch.stack([torch.randn(self.shape, generator=torch.Generator().manual_seed(int(s)))
                            for s in self.seeds])


class StableDiffusionProcessing:  # :142 / :142
    if REFORGE:
        latents_after_sampling = []  # :233 (3b56b268 only)
        pixels_after_sampling = []  # :234 (3b56b268 only)

    def __init__(self, sd_model, prompt="a cat", batch_size=1, n_iter=1, width=64, height=64, seed=1,
                 scripts=None, script_args=(), do_not_save_samples=True, outpath_samples=None):
        self.sd_model = sd_model
        self.prompt, self.negative_prompt = prompt, ""
        self.batch_size, self.n_iter, self.width, self.height, self.seed = batch_size, n_iter, width, height, seed
        self.scripts, self.script_args = scripts, tuple(script_args)
        self.extra_generation_params = {}
        self.comments = {}
        self.extra_result_images = []  # :263 / :267
        self.paste_to = None
        self.do_not_save_samples, self.outpath_samples = do_not_save_samples, outpath_samples
        self.iteration = 0
        self.sampler_latents = None  # the stand-in sampler's result, where a test sets one
        if REFORGE:
            self.latents_after_sampling = []  # :268
            self.pixels_after_sampling = []  # :269

    def comment(self, text):  # :301 / :317
        self.comments[text] = 1

    def close(self):  # :412 / :425 (the API and the UI call it when processing ends: `with closing(p)`)
        self.sampler = None

    def save_samples(self):  # :519 / :629 (nothing interrupted here)
        return opts.samples_save and not self.do_not_save_samples

    def init(self, all_prompts, all_seeds, all_subseeds):  # :406 / :419
        pass

    def run_sampler(self, x):
        """Stands in for the k-diffusion sampler (modules/sd_samplers_kdiffusion.py sample :207 / :261 and
        sample_img2img :145 / :196): sampling_prepare loads the installed UNet patcher, then the CFG denoiser
        calls forge_sample at the first, a middle and the last sigma of the schedule. Returns the latent a test
        put in sampler_latents, else x."""
        unet = self.sd_model.forge_objects.unet
        sampling_prepare(unet, x)
        sigmas = unet.model.model_sampling.sigmas
        for sigma in (sigmas[-1], sigmas[len(sigmas) // 2], sigmas[0]):
            forge_sample(unet, x, float(sigma), [{"model_conds": {}}], [{"model_conds": {}}])
        return self.sampler_latents if self.sampler_latents is not None else x


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):  # :1100 / :1283
    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        # :1230 / :1427, without hires fix
        x = self.rng.next()  # :1259 / :1456
        self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()  # :1261 / :1458
        if self.scripts is not None:  # :1265 / :1462
            self.scripts.process_before_every_sampling(self, x=x, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        return self.run_sampler(x)


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):  # :1489 / :1701
    def __init__(self, sd_model, init_images, resize_mode=0, **kwargs):
        super().__init__(sd_model, **kwargs)
        self.init_images, self.resize_mode = init_images, resize_mode
        self.image_mask = self.mask_for_overlay = self.overlay_images = self.init_latent = None

    def init(self, all_prompts, all_seeds, all_subseeds):  # :1534 / :1746, without a mask
        crop_region = image_mask = None
        if REFORGE and self.scripts is not None:  # :1811 (3b56b268 only)
            self.scripts.before_process_init_images(self, dict(crop_region=crop_region, image_mask=image_mask))
        imgs = []
        for img in self.init_images:
            image = images.flatten(img, opts.img2img_background_color)  # :1602 / :1824
            if crop_region is None and self.resize_mode != 3:
                image = images.resize_image(self.resize_mode, image, self.width, self.height)  # :1605 / :1827
            imgs.append(np.moveaxis(np.array(image).astype(np.float32) / 255.0, 2, 0))
        if len(imgs) == 1:  # :1633 / :1857
            batch_images = np.expand_dims(imgs[0], axis=0).repeat(self.batch_size, axis=0)
        elif len(imgs) <= self.batch_size:
            self.batch_size = len(imgs)
            batch_images = np.array(imgs)
        else:
            raise RuntimeError(f"bad number of images passed: {len(imgs)}; expecting {self.batch_size} or less")
        image = torch.from_numpy(batch_images)
        self.init_latent = images_tensor_to_samples(image, approximation_indexes.get(opts.sd_vae_encode_method),
                                                    self.sd_model)  # :1653 / :1877

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        # :1682 / :1906, without a mask
        x = self.rng.next()
        self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()  # :1689 / :1913
        if self.scripts is not None:  # :1693 / :1917
            self.scripts.process_before_every_sampling(self, x=self.init_latent, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        return self.run_sampler(self.init_latent)


class Processed:  # :524 / :634
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments="",
                 extra_images_list=[]):
        self.images = images_list
        self.extra_images = extra_images_list
        self.prompt = p.prompt
        self.seed = seed
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width, self.height, self.batch_size = p.width, p.height, p.batch_size
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.infotexts = infotexts or [info]

    def js(self):  # :580 / :690 (the fields LayerDiffuse touches, and a few others)
        obj = {
            "prompt": self.all_prompts[0],
            "all_prompts": self.all_prompts,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "width": self.width,
            "height": self.height,
            "batch_size": self.batch_size,
            "extra_generation_params": self.extra_generation_params,
            "index_of_first_image": self.index_of_first_image,
            "infotexts": self.infotexts,
        }
        if REFORGE:
            return json.dumps(obj, default=lambda o: None)  # :726
        return json.dumps(obj)  # :616: TypeError on a callable


def _infotext_text(p, all_prompts, index, generation_params):
    generation_params_text = ", ".join(
        [k if k == v else f'{k}: {quote(v)}' for k, v in generation_params.items() if v is not None])  # :722 / :891
    return f"{all_prompts[index]}\n{generation_params_text}".strip()


if REFORGE:
    def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                        use_main_prompt=False, index=None, all_negative_prompts=None):  # :784 (3b56b268)
        if index is None:
            index = position_in_batch + iteration * p.batch_size
        generation_params = {
            "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
            "Size": f"{p.width}x{p.height}",
            **p.extra_generation_params,  # :876
        }
        for key, value in generation_params.items():  # :881: a list is read at the index, a callable called
            try:
                if isinstance(value, list):
                    generation_params[key] = value[index]
                elif callable(value):
                    generation_params[key] = value(**locals())
            except Exception:
                generation_params[key] = None
        return _infotext_text(p, all_prompts, index, generation_params)
else:
    def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                        use_main_prompt=False, index=None, all_negative_prompts=None):  # :674 (bfee03d8)
        if index is None:
            index = position_in_batch + iteration * p.batch_size
        generation_params = {
            "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
            "Size": f"{p.width}x{p.height}",
            **p.extra_generation_params,  # :717: every value written as it is
        }
        return _infotext_text(p, all_prompts, index, generation_params)


class DecodedSamples(list):  # :630 / :740
    already_decoded = True


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):  # :634 / :744: one call per batch
    samples = DecodedSamples()
    samples_pytorch = decode_first_stage(model, batch).to(target_device)
    for x in samples_pytorch:
        samples.append(x)
    return samples


def process_images_inner(p):  # :766 / :938
    p.all_prompts = [p.prompt] * (p.n_iter * p.batch_size)  # setup_prompts, :426 / :439
    p.all_negative_prompts = [p.negative_prompt] * len(p.all_prompts)
    p.all_seeds = [int(p.seed) + x for x in range(len(p.all_prompts))]  # :803 / :982
    p.all_subseeds = list(p.all_seeds)

    if p.scripts is not None:
        p.scripts.process(p)  # :814 / :993

    infotexts = []
    output_images = []
    with torch.inference_mode():  # :818 / :997
        p.init(p.all_prompts, p.all_seeds, p.all_subseeds)  # :820 / :999

        for n in range(p.n_iter):
            p.iteration = n  # :832 / :1011
            if state.interrupted or state.stopping_generation:  # :837 / :1016
                break
            p.sd_model.forge_objects = p.sd_model.forge_objects_original.shallow_copy()  # :842 / :1021
            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.rng = ImageRNG((4, p.height // 8, p.width // 8), p.seeds)  # :848 / :1028
            p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()  # :861 / :1041

            samples_ddim = p.sample(conditioning=None, unconditional_conditioning=None, seeds=p.seeds,
                                    subseeds=p.subseeds, subseed_strength=0.0, prompts=p.prompts)  # :922 / :1085
            if REFORGE:
                for x_sample in samples_ddim:
                    p.latents_after_sampling.append(x_sample)  # :1089

            if p.scripts is not None:  # :928 / :1098
                ps = scripts.PostSampleArgs(samples_ddim)
                p.scripts.post_sample(p, ps)
                samples_ddim = ps.samples

            if getattr(samples_ddim, 'already_decoded', False):  # :933 / :1103
                x_samples_ddim = samples_ddim
            else:
                if opts.sd_vae_decode_method != 'Full':  # :936 / :1108
                    p.extra_generation_params['VAE Decoder'] = opts.sd_vae_decode_method
                x_samples_ddim = decode_latent_batch(p.sd_model, samples_ddim, target_device=torch.device("cpu"),
                                                     check_for_nans=True)  # :938 / :1110
            x_samples_ddim = torch.stack(x_samples_ddim).float()
            x_samples_ddim = torch.clamp((x_samples_ddim + 1.0) / 2.0, min=0.0, max=1.0)  # :941 / :1113

            def infotext(index=0, use_main_prompt=False):  # :959 / :1131
                return create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt,
                                       index=index, all_negative_prompts=p.negative_prompts)

            save_samples = p.save_samples()

            for i, x_sample in enumerate(x_samples_ddim):  # :964 / :1145
                p.batch_index = i
                x_sample = 255. * np.moveaxis(x_sample.cpu().numpy(), 0, 2)
                image = Image.fromarray(x_sample.astype(np.uint8))

                if p.scripts is not None:  # :981 / :1162
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image

                image, original_denoised_image = apply_overlay(image, p.paste_to, None)  # :1010 / :1191

                if REFORGE:
                    p.pixels_after_sampling.append(image)  # :1193

                if p.scripts is not None:  # :1012 / :1195
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image_after_composite(p, pp)
                    image = pp.image

                if save_samples:  # :1017 / :1200
                    images.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i], opts.samples_format,
                                      info=infotext(i), p=p)

                text = infotext(i)  # :1020 / :1203
                infotexts.append(text)
                if opts.enable_pnginfo:
                    image.info["parameters"] = text
                output_images.append(image)

    return Processed(p, images_list=output_images, seed=p.all_seeds[0], info=infotexts[0],
                     subseed=p.all_subseeds[0], infotexts=infotexts,
                     extra_images_list=p.extra_result_images)  # :1070 / :1253
