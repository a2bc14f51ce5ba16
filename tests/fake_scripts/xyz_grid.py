"""Mirrors the parts of the X/Y/Z plot script (scripts/xyz_grid.py, Forge main dfdcbab6) that an extension's axes
meet; the same in Neo 6e1e0d5, reForge 3b56b268 and old Forge bfee03d8 at the lines in hosts/webui.py. Loaded by
path under the name "xyz_grid.py", as modules/script_loading.py:11 load_module names script modules. Not a
package module: tests load it with load() below and list it in the fake host's modules.scripts.scripts_data."""
import csv
import importlib.util
from copy import copy
from io import StringIO
from itertools import chain
from pathlib import Path


def apply_field(field):  # :31
    def fun(p, x, xs):
        setattr(p, field, x)
    return fun


def format_value_add_label(p, opt, x):  # :193
    if type(x) == float:
        x = round(x, 8)
    return f"{opt.label}: {x}"


def do_nothing(p, x, xs):  # :211
    pass


class AxisOption:  # :237
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None,
                 prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


class AxisOptionImg2Img(AxisOption):  # :249
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = True


axis_options = [  # :261 (the first entries)
    AxisOption("Nothing", str, do_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOptionImg2Img("Image CFG Scale", float, apply_field("image_cfg_scale")),
]


def csv_string_to_list_strip(data_str):  # :232
    return list(map(str.strip, chain.from_iterable(csv.reader(StringIO(data_str), skipinitialspace=True))))


class Script:  # :439
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):  # :443-444: the axis dropdown's options, fixed when the UI is built
        self.current_axis_options = [x for x in axis_options if type(x) == AxisOption or x.is_img2img == is_img2img]
        return [x.label for x in self.current_axis_options]

    def run(self, p, x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, process_images,
            csv_mode=False):
        """run() (:562) for two axes, without ranges or seeds: each axis's values read (:573-639: the dropdown
        when the axis has choices and not csv_mode, else the CSV text; converted with opt.type; opt.confirm(p,
        values) before any cell), then per cell (:731-756) a shallow copy of p, each axis's apply on it, and
        process_images(copy); an exception in a cell is displayed and the cell left empty (:753-756).
        `process_images` stands in for modules/processing.py process_images. Returns {(ix, iy): result}."""
        def process_axis(opt, vals, vals_dropdown):
            if opt.label == "Nothing":
                return [0]
            if opt.choices is not None and not csv_mode:
                valslist = vals_dropdown
            else:
                valslist = csv_string_to_list_strip(vals)
            valslist = [opt.type(x) for x in valslist]
            if opt.confirm:
                opt.confirm(p, valslist)
            return valslist

        x_opt, y_opt = self.current_axis_options[x_type], self.current_axis_options[y_type]
        xs = process_axis(x_opt, x_values, x_values_dropdown)
        ys = process_axis(y_opt, y_values, y_values_dropdown)
        results = {}
        for iy, y in enumerate(ys):
            for ix, x in enumerate(xs):
                pc = copy(p)
                x_opt.apply(pc, x, xs)
                y_opt.apply(pc, y, ys)
                try:
                    results[(ix, iy)] = process_images(pc)
                except Exception as e:  # errors.display(e, "generating image for xyz plot")
                    results[(ix, iy)] = e
        return results


def load(scripts_module):
    """Load this file as the host loads a script file, and list it in `scripts_module.scripts_data`
    (modules/scripts.py load_scripts, :513). Returns the module."""
    path = Path(__file__)
    spec = importlib.util.spec_from_file_location(path.name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scripts_module.scripts_data.append(
        scripts_module.ScriptClassData(module.Script, str(path), str(path.parents[1]), module))
    return module
