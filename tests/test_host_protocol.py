"""Every host bridge offers exactly what hosts/protocol.py declares, with the same parameters.

Read from the source (the bridges import their host at module level, so they cannot be imported here): each
bridge's own functions and the ones it re-exports from the shared layers (webui.py, comfy_patcher.py) or from
another bridge are resolved to their definitions and compared with the Protocol's signatures."""
import ast
import inspect
from pathlib import Path

import pytest

from lib_layerdiffusion.hosts.protocol import PROTOCOL_NAMES, Host

HOSTS = Path(__file__).resolve().parents[1] / "lib_layerdiffusion" / "hosts"
BRIDGES = ("forge_backend", "forge_neo", "forge_legacy")


def _definitions(module: str, seen=()) -> dict[str, object]:
    """name -> ast.FunctionDef (or a constant's value) available at the top level of hosts/<module>.py."""
    tree = ast.parse((HOSTS / f"{module}.py").read_text())
    found: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                found[target.id] = node.value.value
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module and module not in seen:
            source = _definitions(node.module, (*seen, module))
            for alias in node.names:
                if alias.name in source:
                    found[alias.asname or alias.name] = source[alias.name]
    return found


def _parameters(function: ast.FunctionDef) -> list[str]:
    return [a.arg for a in function.args.args]


@pytest.mark.parametrize("bridge", BRIDGES)
def test_bridge_implements_the_host_protocol(bridge):
    found = _definitions(bridge)
    assert isinstance(found.get("NAME"), str) and found["NAME"], f"{bridge} has no NAME"
    for name in PROTOCOL_NAMES:
        assert name in found, f"{bridge} lacks {name}"
        expected = [p for p in inspect.signature(getattr(Host, name)).parameters if p != "self"]
        assert _parameters(found[name]) == expected, (bridge, name)


@pytest.mark.parametrize("bridge", BRIDGES)
def test_every_bridge_function_says_which_host_code_it_relies_on_or_is_shared(bridge):
    """A bridge's own functions are the host-specific ones: each docstring names the host file it mirrors, or
    the function is a small adapter of a shared one (comfy_patcher)."""
    tree = ast.parse((HOSTS / f"{bridge}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            doc = ast.get_docstring(node) or ""
            body = ast.unparse(node)
            assert ".py" in doc or "comfy_patcher." in body or "forge_backend" in body, (bridge, node.name)


def test_protocol_lists_what_the_generation_and_script_use():
    """Every bridge.<name> the script and generation call is in the Protocol (nothing reaches the host around
    it)."""
    root = HOSTS.parent.parent
    used = set()
    for path in (root / "scripts" / "layerdiffuse.py", root / "lib_layerdiffusion" / "generation.py",
                 HOSTS / "apply_plan.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in ("bridge", "host"):
                used.add(node.attr)
    assert used and used <= set(PROTOCOL_NAMES) | {"NAME"}, used - set(PROTOCOL_NAMES)
