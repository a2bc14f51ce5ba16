"""install.py, run as Forge runs it (modules/launch_utils.py run_extension_installer: a separate Python process
with Forge's folder on PYTHONPATH), against a stand-in `launch` module that records the pip commands instead of
running them (launch.run_pip / launch.args of modules/launch_utils.py)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lib_layerdiffusion.images import psd_file

ROOT = Path(__file__).resolve().parent.parent

FAKE_LAUNCH = '''
import os, types
# modules/launch_utils.py: args = cmd_args parse (ui_settings_file defaults to <data dir>/config.json)
args = types.SimpleNamespace(ui_settings_file=os.environ["FAKE_CONFIG"])
def run_pip(command, desc=None, live=False):  # modules/launch_utils.py run_pip: python -m pip <command> ...
    with open(os.environ["PIP_LOG"], "a") as f:
        f.write(command + "\\n")
'''


def run_installer(tmp_path, config, pillow=None, isolated=True):
    """Run install.py; `isolated` hides the test venv's packages (python -S), so psd-tools and the rest are
    missing; `pillow` then plants a Pillow distribution of that version. Returns the pip commands."""
    forge = tmp_path / "forge"
    forge.mkdir(exist_ok=True)
    (forge / "launch.py").write_text(FAKE_LAUNCH)
    if pillow:
        dist = forge / f"Pillow-{pillow}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: Pillow\nVersion: {pillow}\n")
    config_file = tmp_path / "data" / "config.json"
    config_file.parent.mkdir(exist_ok=True)
    if config is not None:
        config_file.write_text(json.dumps(config) if isinstance(config, dict) else config)
    log = tmp_path / "pip.log"
    log.write_text("")
    env = {"PYTHONPATH": str(forge), "FAKE_CONFIG": str(config_file), "PIP_LOG": str(log)}
    command = [sys.executable, *(["-S"] if isolated else []), str(ROOT / "install.py")]
    subprocess.run(command, cwd=forge, env=env, check=True, capture_output=True, text=True)
    return log.read_text().splitlines()


def psd_commands(commands):
    return [c for c in commands if "psd-tools" in c or "attrs" in c]


BASICS = ["install safetensors", "install opencv-python", "install huggingface_hub", "install einops"]


def test_psd_tools_installed_when_the_setting_is_on_and_it_is_missing(tmp_path):
    commands = run_installer(tmp_path, {"layerdiffuse_save_psd_file": True}, pillow="10.4.0")
    assert commands[:4] == BASICS  # everything is missing under python -S
    assert psd_commands(commands) == [f'install "{psd_file.REQUIREMENT}"']


def test_with_forges_pinned_old_pillow_psd_tools_goes_in_without_touching_pillow(tmp_path):
    commands = run_installer(tmp_path, {"layerdiffuse_save_psd_file": True}, pillow="9.5.0")
    assert psd_commands(commands) == [f'install --no-deps "{psd_file.REQUIREMENT}"',
                                      'install "attrs>=23" "typing-extensions>=4"']
    assert not any("pillow" in c.lower() for c in commands)


@pytest.mark.parametrize("config", [{"layerdiffuse_save_psd_file": False}, {}, None, "not json", "[1, 2]",
                                    {"layerdiffuse_save_psd_file": "yes"}])
def test_nothing_for_psd_when_the_setting_is_off_or_unreadable(tmp_path, config):
    commands = run_installer(tmp_path, config, pillow="10.4.0")
    assert commands == BASICS


def test_nothing_when_everything_is_there(tmp_path):
    pytest.importorskip("psd_tools")
    assert run_installer(tmp_path, {"layerdiffuse_save_psd_file": True}, isolated=False) == []
