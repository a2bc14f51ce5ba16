"""Mirrors modules/script_callbacks.py (Forge Neo 6e1e0d5): the registries LayerDiffuse adds to, and
ImageSaveParams."""
callbacks = {"ui_settings": [], "before_image_saved": [], "image_saved": [], "app_started": []}


class ImageSaveParams:  # script_callbacks.py:18
    def __init__(self, image, p, filename, pnginfo):
        self.image, self.p, self.filename, self.pnginfo = image, p, filename, pnginfo


def on_app_started(callback, *, name=None):  # script_callbacks.py:456
    callbacks["app_started"].append(callback)


def on_ui_settings(callback, *, name=None):  # script_callbacks.py:493
    callbacks["ui_settings"].append(callback)


def on_before_image_saved(callback, *, name=None):  # script_callbacks.py:499
    callbacks["before_image_saved"].append(callback)


def on_image_saved(callback, *, name=None):  # script_callbacks.py:507
    callbacks["image_saved"].append(callback)


callbacks["before_ui"] = []


def on_before_ui(callback, *, name=None):  # script_callbacks.py:588
    callbacks["before_ui"].append(callback)


def before_ui_callback():  # script_callbacks.py:394
    for callback in reversed(callbacks["before_ui"]):
        callback()
