"""Mirrors modules/script_callbacks.py: the callback registries LayerDiffuse uses, and ImageSaveParams."""
callbacks = {"ui_settings": [], "before_image_saved": [], "image_saved": []}


class ImageSaveParams:
    def __init__(self, image, p, filename, pnginfo):
        self.image, self.p, self.filename, self.pnginfo = image, p, filename, pnginfo


def on_ui_settings(callback, *, name=None):
    callbacks["ui_settings"].append(callback)


def on_before_image_saved(callback, *, name=None):
    callbacks["before_image_saved"].append(callback)


def on_image_saved(callback, *, name=None):
    callbacks["image_saved"].append(callback)


callbacks["app_started"] = []


def on_app_started(callback, *, name=None):
    callbacks["app_started"].append(callback)


callbacks["before_ui"] = []


def on_before_ui(callback, *, name=None):  # modules/script_callbacks.py:588
    callbacks["before_ui"].append(callback)


def before_ui_callback():  # modules/script_callbacks.py:394 (webui.py:58 / :81 call it)
    for callback in reversed(callbacks["before_ui"]):
        callback()
