"""modules/scripts.py of both hosts, lines as (bfee03d8 / 3b56b268). PostprocessImageArgs has no index in either
(A1111 added it in 1.9, reForge kept the old class). ScriptRunner.before_process_init_images exists in reForge
only. The ScriptRunner runs each always-on script's hook with that script's slice of p.script_args and reports
any exception instead of raising it (errors.report), so a script's error never stops a generation by itself;
the fake keeps the reported ones in `errors` for the tests."""
import logging

import fake_host

log = logging.getLogger(__name__)

AlwaysVisible = object()  # :12 / :14


class PostprocessImageArgs:  # :30 / :32
    def __init__(self, image):
        self.image = image


class PostSampleArgs:  # :26 / :28
    def __init__(self, samples):
        self.samples = samples


class Script:  # :50 / :52
    filename = None
    args_from = None
    args_to = None
    infotext_fields = None
    paste_field_names = None


class ScriptRunner:  # :571 / :560
    def __init__(self, scripts=()):
        self.alwayson_scripts = list(scripts)
        self.errors = []

    def _run(self, hook, p, *args, **kwargs):
        for script in self.alwayson_scripts:
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, hook)(p, *args, *script_args, **kwargs)
            except Exception as e:  # errors.report(f"Error running {hook}: {script.filename}", exc_info=True)
                log.exception("Error running %s: %s", hook, script.filename)
                self.errors.append((hook, e))

    def process(self, p):  # :799 / :848
        self._run("process", p)

    if fake_host.is_reforge():
        def before_process_init_images(self, p, pp, **kwargs):  # :880 (3b56b268 only)
            self._run("before_process_init_images", p, pp, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):  # :831 / :864
        self._run("process_before_every_sampling", p, **kwargs)

    def post_sample(self, p, ps):  # :863 / :928
        self._run("post_sample", p, ps)

    def postprocess_image(self, p, pp):  # :879 / :944
        self._run("postprocess_image", p, pp)

    def postprocess_image_after_composite(self, p, pp):  # :895 / :960
        self._run("postprocess_image_after_composite", p, pp)


# :379-381 / :391-393: every loaded script file, module included (the X/Y/Z plot's is found there)
from collections import namedtuple  # noqa: E402

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []
