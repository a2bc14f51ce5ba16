"""modules/script_callbacks.py of both hosts: the callbacks LayerDiffuse registers and how the WebUI runs them
(each in a try: an exception is reported, the others still run). Lines as (bfee03d8 / 3b56b268)."""
import logging
from collections import namedtuple

log = logging.getLogger(__name__)


class ImageSaveParams:  # :17 / :18
    def __init__(self, image, p, filename, pnginfo):
        self.image, self.p, self.filename, self.pnginfo = image, p, filename, pnginfo


ScriptCallback = namedtuple("ScriptCallback", ["script", "callback"])  # :119 (3b56b268 :121 adds name, category)
callback_map = dict(callbacks_app_started=[], callbacks_ui_settings=[], callbacks_before_image_saved=[],
                    callbacks_image_saved=[], callbacks_before_ui=[])  # :120 / :219


def _run(kind, *args):
    for c in callback_map[kind]:
        try:
            c.callback(*args)
        except Exception:
            log.exception("Error running %s", kind)


def app_started_callback(demo, app):  # :153 / :253
    _run("callbacks_app_started", demo, app)


def ui_settings_callback():  # :198 / :298
    _run("callbacks_ui_settings")


def before_image_saved_callback(params):  # :206 / :306
    _run("callbacks_before_image_saved", params)


def image_saved_callback(params):  # :214 / :314
    _run("callbacks_image_saved", params)


def add_callback(callbacks, fun, *, name=None):  # :351 / :127
    callbacks.append(ScriptCallback("layerdiffuse", fun))


def on_app_started(callback, *, name=None):  # :374 / :468 (bfee03d8 takes no name)
    add_callback(callback_map["callbacks_app_started"], callback)


def on_ui_settings(callback, *, name=None):  # :411 / :505
    add_callback(callback_map["callbacks_ui_settings"], callback)


def on_before_image_saved(callback, *, name=None):  # :417 / :511
    add_callback(callback_map["callbacks_before_image_saved"], callback)


def on_image_saved(callback, *, name=None):  # :425 / :519
    add_callback(callback_map["callbacks_image_saved"], callback)


def before_ui_callback():  # :294 / :394 (run in reverse order of registration)
    for c in reversed(callback_map["callbacks_before_ui"]):
        try:
            c.callback()
        except Exception:
            log.exception("Error running before_ui")


def on_before_ui(callback):  # :506 / :600 (bfee03d8 takes no name; reForge also name=, category)
    add_callback(callback_map["callbacks_before_ui"], callback)
