"""modules/shared.py opts (:40 bfee03d8, :44 3b56b268) and OptionInfo (:73 / :77), from modules/options.py: saved
values in .data (which starts with every default, options.py:86 / :90), registered options in .data_labels, an
attribute reads .data then the default. Defaults of the options LayerDiffuse meets (modules/shared_options.py)."""
import fake_host


class OptionInfo:  # modules/options.py:13 (both)
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False,
                 category_id=None):
        self.default, self.label, self.component = default, label, component
        self.component_args, self.section = component_args, section
        self.do_not_save = False


class Options:  # modules/options.py:82 (bfee03d8), :86 (3b56b268)
    def __init__(self, data_labels):
        object.__setattr__(self, "data_labels", data_labels)
        object.__setattr__(self, "data", {k: v.default for k, v in data_labels.items() if not v.do_not_save})

    def __setattr__(self, key, value):  # options.py:90 / :94
        self.data[key] = value

    def __getattr__(self, item):  # options.py:131 / :135
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def add_option(self, key, info):  # options.py:253 / :278
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default


_options = {  # modules/shared_options.py, lines as (bfee03d8 / 3b56b268)
    "samples_save": OptionInfo(True, "Always save all generated images"),  # :33 / :36
    "samples_format": OptionInfo('png', 'File format for images'),  # :34 / :37
    "upscaler_for_img2img": OptionInfo(None, "Upscaler for img2img"),  # :103 / :125
    "sd_vae_encode_method": OptionInfo("Full", "VAE type for encode"),  # :186 / :239
    "sd_vae_decode_method": OptionInfo("Full", "VAE type for decode"),  # :187 / :240
    "img2img_background_color": OptionInfo("#ffffff", "With img2img, fill transparent parts ..."),  # :196 / :269
    "overlay_inpaint": OptionInfo(True, "Overlay original for inpaint"),  # :204 / :277
    "enable_pnginfo": OptionInfo(True, "Write infotext to metadata of the generated image"),  # :322 / :402
}
if fake_host.is_reforge():  # shared_options.py:403 (3b56b268); bfee03d8 has no stealth infotext
    _options["stealth_pnginfo_opt"] = OptionInfo("None", "Stealth infotext mode")

opts = Options(_options)


class State:  # modules/shared_state.py State: the flags the processing loop reads
    interrupted = False
    stopping_generation = False


state = State()
