"""Mirrors modules/scripts_postprocessing.py: PostprocessedImage and the ScriptPostprocessing base class."""


class PostprocessedImage:
    def __init__(self, image):
        self.image = image
        self.info = {}
        self.extra_images = []


class ScriptPostprocessing:
    order = 1000
    name = None

    def ui(self):
        pass

    def process(self, pp, **args):
        pass

    def process_firstpass(self, pp, **args):
        pass
