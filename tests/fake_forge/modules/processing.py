"""Mirrors modules/processing.py create_infotext (Forge dfdcbab6): values of p.extra_generation_params may be
callables, called per image with the image's index."""


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    index = position_in_batch + iteration * p.batch_size if index is None else index
    values = {}
    for key, value in p.extra_generation_params.items():
        if callable(value):  # modules/processing.py:786 elif callable(value): value = value(**locals())
            value = value(p=p, index=index)
        values[key] = value
    return ", ".join(f"{k}: {v}" for k, v in values.items() if v is not None)


class DecodedSamples(list):  # processing.py:624: process_images_inner skips its own decode for these
    already_decoded = True
