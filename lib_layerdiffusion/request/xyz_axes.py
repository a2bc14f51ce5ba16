"""LayerDiffuse's Method, Weight and Stop At as axes of the host's X/Y/Z plot script (scripts/xyz_grid.py).

The plot runs one generation per cell on a shallow copy of the processing object, after calling each axis's
apply(p_copy, value) (scripts/xyz_grid.py run(), cell()). Our arguments reach the script through p.script_args,
which every cell shares, so an axis value is kept on the cell's copy as one typed override (`OVERRIDE_ATTR`), and
generation.begin puts it over the parsed arguments (`with_override`), the only place it is read. Values are
checked with the API's own parsers and messages, once for all values before the first cell (the plot's confirm
step, which stops the whole request with the message) and again when applied.
Nothing here imports the host: hosts/webui.py turns `AXES` into the host's AxisOption objects.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import InvalidArgumentError
from .args import LayerDiffuseArgs, parse_ending_step, parse_weight
from .methods import METHOD_VALUES, Method, method_by_name

# the attribute of a cell's processing object holding that cell's XyzOverride
OVERRIDE_ATTR = "layerdiffuse_xyz"


@dataclass(frozen=True)
class XyzOverride:
    """The values the X/Y/Z plot sets for one cell; None: the value the request gave."""
    method: Method | None = None
    weight: float | None = None
    ending_step: float | None = None

    def set(self, field: str, value: Any) -> "XyzOverride":
        return replace(self, **{field: value})

    def fields(self) -> dict[str, Any]:
        return {name: value for name, value in (("method", self.method), ("weight", self.weight),
                                                ("ending_step", self.ending_step)) if value is not None}


@dataclass(frozen=True)
class XyzAxis:
    label: str  # as the plot's axis type dropdown shows it
    field: str  # the LayerDiffuseArgs field it sets
    value_type: type  # what the plot converts each value with (float: it also expands ranges such as 0-1 [5])
    parse: Callable[[Any], Any]  # value -> typed value, or InvalidArgumentError with the API's message
    choices: tuple[str, ...] | None = None  # a dropdown of values instead of a text field

    def apply(self, p, value) -> None:
        """Set this axis's value on the cell's processing object (a copy the plot made for this cell)."""
        current = getattr(p, OVERRIDE_ATTR, None) or XyzOverride()
        setattr(p, OVERRIDE_ATTR, current.set(self.field, self.parse(value)))

    def confirm(self, values: Sequence, script_args: tuple | None) -> None:
        """Before the first cell: every value must parse, and LayerDiffuse must be on (`script_args`: ours in this
        request, None when the host could not tell), else the whole plot would be cells without it."""
        for value in values:
            self.parse(value)
        if script_args is not None and not LayerDiffuseArgs.from_script_args(*script_args).enabled:
            raise InvalidArgumentError(off_message(f"a '{self.label}' axis"))


def off_message(what: str) -> str:
    return (f"[LayerDiffuse] The X/Y/Z plot has {what}, but LayerDiffuse is not enabled: tick Enable "
            f"LayerDiffuse (API: enabled true in alwayson_scripts.LayerDiffuse.args), or remove that axis.")


def _method(value: Any) -> Method:
    return method_by_name(value)


AXES: tuple[XyzAxis, ...] = (
    XyzAxis("[LayerDiffuse] Method", "method", str, _method, choices=METHOD_VALUES),
    XyzAxis("[LayerDiffuse] Weight", "weight", float, parse_weight),
    XyzAxis("[LayerDiffuse] Stop At", "ending_step", float, parse_ending_step),
)


def with_override(p, args: LayerDiffuseArgs) -> LayerDiffuseArgs:
    """The request's arguments with this cell's X/Y/Z values over them (unchanged outside a plot)."""
    override = getattr(p, OVERRIDE_ATTR, None)
    if override is None or not override.fields():
        return args
    if not args.enabled:
        # the plot's confirm step normally stops this earlier; a host that gave no script args gets it here
        names = ", ".join(axis.label for axis in AXES if axis.field in override.fields())
        raise InvalidArgumentError(off_message(f"LayerDiffuse axes ({names})"))
    return replace(args, **override.fields())
