"""Nothing a LayerDiffuse request builds outlives it (issue #16). In the real Forge a finished processing object
stays reachable from its sampler <-> CFG denoiser reference cycle until Python's cyclic collector runs, which big
tensors never trigger: measured on the rig (Forge main dfdcbab6, SD1.5 attention sharing) every request's
~600 MiB of attention units stayed alive until a gc.collect(). Here the processing objects are kept alive the same
way (a list) with the collector off, and weak references show whether the units, recorded latents and pixels of
the earlier requests are gone, freed by reference counting alone.
"""
import gc
import weakref
from types import SimpleNamespace

import pytest
import torch

from test_forge_script import (  # noqa: F401  (fixtures)
    JOINT, forge_after_sampling, make_p, models_dir, run_sampling_setup, script, sd15_args, sd15_files,
)


@pytest.fixture()
def no_cyclic_gc():
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    yield
    if was_enabled:
        gc.enable()


def test_units_latents_and_pixels_of_a_request_do_not_outlive_it(script, sd15_files, no_cyclic_gc):
    from lib_layerdiffusion import generation
    from lib_layerdiffusion.hosts.apply_plan import UNITS_ATTR

    script_args = sd15_args(JOINT, prompts=("glass", "", "on a table"))
    first = make_p(is_sdxl=False, batch_size=3, sd15_unet=True)
    sd_model = first.sd_model
    original = SimpleNamespace(**vars(sd_model.forge_objects))  # backend/diffusion_engine forge_objects_original
    finished, watched = [], []
    for _ in range(4):
        # modules/processing.py:937: each request starts from the shared model's original forge objects
        sd_model.forge_objects = SimpleNamespace(**vars(original))
        p = make_p(is_sdxl=False, batch_size=3, sd15_unet=True)
        p.sd_model = sd_model
        run_sampling_setup(script, p, script_args)
        model = getattr(p, UNITS_ATTR)[1]
        refs = [weakref.ref(model)] + [weakref.ref(u) for u in model.units]
        forge_after_sampling(script, p, script_args)
        refs += [weakref.ref(t) for t in getattr(p, generation.DECODED_ATTR)]
        refs += [weakref.ref(image) for image in getattr(p, generation.PIXELS_ATTR).values()]
        del model
        script.postprocess(p, SimpleNamespace(images=[]), *script_args)
        finished.append(p)  # as Forge's sampler cycle keeps it
        watched.append(refs)
    # the latest request's units live on in the clone the host keeps installed (sd_model.forge_objects.unet) until
    # the next request replaces it; nothing of the earlier requests is left
    alive = [sum(r() is not None for r in refs) for refs in watched]
    assert alive[:-1] == [0, 0, 0], alive
    assert alive[-1] > 0
    sd_model.forge_objects = SimpleNamespace(**vars(original))
    assert sum(r() is not None for r in watched[-1]) == 0
    assert len(watched[0]) >= 1 + 32 + 3 + 3  # model, units, latents, pixels were all watched
    assert not any(hasattr(p, name) for p in finished for name in generation.REQUEST_ATTRS)


def test_release_leaves_a_disabled_request_untouched(script):
    p = make_p()
    before = dict(vars(p))
    script.process(p, *(False, "x", 1.0, 1.0, None, None, None, "Crop and Resize", False, "", "", ""))
    script.postprocess(p, SimpleNamespace(images=[]))
    assert vars(p) == before


def test_a_second_request_on_a_released_processing_object_builds_afresh(script, sd15_files):
    """The hires pass reuses the units within a generation; after release a new generation builds its own."""
    from lib_layerdiffusion.hosts.apply_plan import UNITS_ATTR
    p = make_p(is_sdxl=False, batch_size=3, sd15_unet=True)
    script_args = sd15_args(JOINT)
    run_sampling_setup(script, p, script_args)
    first = getattr(p, UNITS_ATTR)[1]
    script.process_before_every_sampling(p, *script_args, x=torch.zeros(3, 4, 8, 8), noise=torch.zeros(3, 4, 8, 8))
    assert getattr(p, UNITS_ATTR)[1] is first  # same generation: reused
    forge_after_sampling(script, p, script_args)
    script.postprocess(p, SimpleNamespace(images=[]), *script_args)
    run_sampling_setup(script, p, script_args)
    assert getattr(p, UNITS_ATTR)[1] is not first
