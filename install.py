"""Forge runs this at start-up (launch.py → each extension's install.py): install only what Forge lacks.

Forge already ships torch, safetensors, numpy, opencv, huggingface_hub and einops, so normally nothing happens;
nothing here upgrades or replaces what is there.

psd-tools (for "Save a layered Photoshop (.psd) file") is installed only when that setting is on in Forge's
config.json and psd-tools is missing. The config file is the one Forge itself reads: `launch.args` is Forge's own
command-line parse (modules/launch_utils.py), whose --ui-settings-file defaults to <--data-dir>/config.json. Forge
runs this file in a separate Python process that sees the flags given through COMMANDLINE_ARGS (webui-user.bat /
webui-user.sh, the usual way) but not flags typed after launch.py; with those, the default data folder's
config.json is read, and if the setting is not on there, the generation's result note says how to install
psd-tools instead.
"""
import importlib.metadata
import importlib.util
import json
import os

import launch

REQUIRED = {
    # import name: pip requirement (checked by import name: opencv may be installed as any of its variants)
    "safetensors": "safetensors",
    "cv2": "opencv-python",
    "huggingface_hub": "huggingface_hub",
    "einops": "einops",
}
PSD_SETTING = "layerdiffuse_save_psd_file"
PSD_REQUIREMENT = "psd-tools>=1.24,<1.27"  # the same as lib_layerdiffusion/images/psd_file.py REQUIREMENT
# psd-tools declares Pillow>=10.3. Forge main pins Pillow 9.5.0 and puts it back on its next start when anything
# changed it, so there psd-tools goes in without its dependencies (what LayerDiffuse uses of it, writing layered
# files, works with Pillow 9.5.0) and its other two, attrs and typing-extensions, are installed by themselves.
PILLOW_FOR_PSD_TOOLS = (10, 3)


def config_path() -> str:
    path = getattr(getattr(launch, "args", None), "ui_settings_file", None)
    if path:
        return path
    from modules import paths_internal  # Forges whose parser has no --ui-settings-file
    return os.path.join(paths_internal.data_path, "config.json")


def setting_on(key: str) -> bool:
    try:
        with open(config_path(), encoding="utf8") as file:
            return json.load(file).get(key) is True
    except (OSError, ValueError, AttributeError):  # no config yet (first start), or not a JSON object
        return False


def pillow_version() -> tuple:
    try:
        return tuple(int(part) for part in importlib.metadata.version("Pillow").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0)


for module, requirement in REQUIRED.items():
    if importlib.util.find_spec(module) is None:
        launch.run_pip(f"install {requirement}", f"{requirement} for LayerDiffuse")

if setting_on(PSD_SETTING) and importlib.util.find_spec("psd_tools") is None:
    if pillow_version() >= PILLOW_FOR_PSD_TOOLS:
        launch.run_pip(f'install "{PSD_REQUIREMENT}"', "psd-tools for LayerDiffuse's .psd files")
    else:
        launch.run_pip(f'install --no-deps "{PSD_REQUIREMENT}"', "psd-tools for LayerDiffuse's .psd files")
        launch.run_pip('install "attrs>=23" "typing-extensions>=4"', "psd-tools' dependencies for LayerDiffuse")
