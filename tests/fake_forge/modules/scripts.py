"""Mirrors modules/scripts.py: the Script base class, AlwaysVisible, PostprocessImageArgs and the ScriptRunner
hook LayerDiffuse checks for (Forge dfdcbab6)."""
AlwaysVisible = object()


class Script:
    infotext_fields = None
    paste_field_names = None

    def postprocess(self, p, processed, *args):  # modules/scripts.py:286: a no-op unless a script overrides it
        pass


class PostSampleArgs:  # scripts.py:28
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:  # modules/scripts.py:32 PostprocessImageArgs
    def __init__(self, image, index):
        self.image = image
        self.index = index


class ScriptRunner:
    def before_process_init_images(self, p, pp):  # modules/scripts.py:864 ScriptRunner.before_process_init_images
        pass


# modules/scripts.py:383-385: every loaded script file, module included (the X/Y/Z plot's is found there)
from collections import namedtuple  # noqa: E402

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []
