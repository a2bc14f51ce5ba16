"""This test process as one Forge would have it, for the bridge tests of the hosts whose fakes share package
names (`modules`, `backend`, `ldm_patched`, `modules_forge`): the host packages already imported are set aside,
sys.path shows only the chosen fake (not the other fakes), and on leaving everything is put back as it was, so
other test files see no trace, whatever the order."""
from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKES = tuple(Path(__file__).parent / name for name in ("fake_forge", "fake_forge_neo", "fake_forge_legacy"))
HOST_PACKAGES = ("modules", "backend", "ldm_patched", "modules_forge", "fake_host")


@contextlib.contextmanager
def fake_host_process(fake: Path, host_bound: tuple[str, ...]):
    """Yields the lib_layerdiffusion.hosts package. `host_bound`: our modules that bind to the Forge they are
    imported in (the bridges, webui): imported afresh under the fake, and set aside again on leaving, together
    with the hosts package's attributes for them."""
    def is_host_module(name: str) -> bool:
        return name.split(".")[0] in HOST_PACKAGES or name in host_bound

    saved_path = list(sys.path)
    sys.path.insert(0, str(ROOT))
    hosts = importlib.import_module("lib_layerdiffusion.hosts")
    missing = object()
    attrs = [name.rsplit(".", 1)[1] for name in host_bound]
    saved_attrs = {attr: hosts.__dict__.get(attr, missing) for attr in attrs}
    saved_modules = {name: module for name, module in sys.modules.items() if is_host_module(name)}
    for name in saved_modules:
        del sys.modules[name]
    for attr in attrs:
        hosts.__dict__.pop(attr, None)
    others = {other.resolve() for other in FAKES if other.resolve() != fake.resolve()}
    sys.path[:] = [str(fake), str(ROOT)] + [p for p in saved_path if not p or Path(p).resolve() not in others]
    importlib.invalidate_caches()
    try:
        yield hosts
    finally:
        for name in [n for n in sys.modules if is_host_module(n)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path
        for attr, saved in saved_attrs.items():
            if saved is missing:
                hosts.__dict__.pop(attr, None)
            else:
                setattr(hosts, attr, saved)
        importlib.invalidate_caches()
