"""Rig-only extension (never shipped): lets tests/rig/memory_growth.py tell memory that a request left alive from
memory the C allocator keeps after it was freed. glibc keeps freed heap pages mapped (and reuses them), so the RSS
of a process that frees ~1 GB of patched weights per request swings by that much from request to request without
anything being alive; after a full `gc.collect()` and `malloc_trim(0)` the RSS is what live objects hold.

    POST /ld-rig/settle  ->  {"rss_before_mib": ..., "rss_after_mib": ..., "collected": N}

Registered through the hosts' `script_callbacks.on_app_started` (modules/script_callbacks.py in every Forge
generation: called with the FastAPI app also under --nowebui).
"""
import ctypes
import gc

from modules import script_callbacks


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _settle() -> dict:
    before = _rss_mib()
    collected = gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {"rss_before_mib": before, "rss_after_mib": _rss_mib(), "collected": collected}


def _on_app_started(_demo, app):
    app.add_api_route("/ld-rig/settle", _settle, methods=["POST"])


script_callbacks.on_app_started(_on_app_started)
