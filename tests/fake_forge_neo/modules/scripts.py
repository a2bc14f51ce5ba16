"""Mirrors modules/scripts.py (Forge Neo 6e1e0d5): AlwaysVisible, the Script base class, PostprocessImageArgs
(with the image's index) and the ScriptRunner hook img2img transparency needs."""
AlwaysVisible = object()  # scripts.py:14


class PostSampleArgs:  # scripts.py:30
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:  # scripts.py:35
    def __init__(self, image, index):
        self.image = image
        self.index = index


class Script:  # scripts.py:58
    name = None
    infotext_fields = None
    paste_field_names = None


class ScriptRunner:  # scripts.py:557
    def __init__(self):
        self.scripts = []

    def before_process_init_images(self, p, pp, **kwargs):  # scripts.py:865
        for script in self.scripts:
            script.before_process_init_images(p, pp, *p.script_args, **kwargs)


# scripts.py:388-390: every loaded script file, module included (the X/Y/Z plot's is found there)
from collections import namedtuple  # noqa: E402

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []
