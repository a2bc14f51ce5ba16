"""Mirrors modules/processing.py create_infotext (Forge Neo 6e1e0d5) for p.extra_generation_params: a list
value is taken at the image's index, a callable is called with the function's locals (index and p among them)."""


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):  # processing.py:659
    if index is None:
        index = position_in_batch + iteration * p.batch_size
    generation_params = dict(p.extra_generation_params)
    for key, value in generation_params.items():  # processing.py:774
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:
            generation_params[key] = None
    return ", ".join(k if k == v else f"{k}: {v}" for k, v in generation_params.items() if v is not None)


class DecodedSamples(list):  # processing.py:615: process_images_inner skips its own decode for these
    already_decoded = True
