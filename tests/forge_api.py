"""A small standard-library client for a running Forge's HTTP API, used by tests/test_forge_integration.py.

Standard library only at import time (Pillow is imported where images are decoded), so importing this module
never fails in an environment without Forge.
"""
from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TIMEOUT_S = 900.0


@dataclass
class Response:
    status: int
    body: bytes
    elapsed_s: float
    json: Any = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    def text(self, limit: int = 4000) -> str:
        return self.body[:limit].decode("utf-8", "replace")


@dataclass
class Txt2ImgResult:
    """A successful /sdapi/v1/txt2img answer: the raw PNG bytes of each image, and the decoded images."""
    response: Response
    png_bytes: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def elapsed_s(self) -> float:
        return self.response.elapsed_s

    @property
    def infotexts(self) -> list:
        return list(self.info.get("infotexts") or [])

    def images(self):
        return [decode_png(raw) for raw in self.png_bytes]


class ForgeClient:
    def __init__(self, base_url: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: Any = None, timeout_s: float | None = None) -> Response:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        start = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        elapsed = time.monotonic() - start
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return Response(status=status, body=raw, elapsed_s=elapsed, json=parsed)

    def get(self, path: str, timeout_s: float | None = None) -> Response:
        return self.request("GET", path, timeout_s=timeout_s)

    def post(self, path: str, body: Any, timeout_s: float | None = None) -> Response:
        return self.request("POST", path, body, timeout_s=timeout_s)

    # --- conveniences -------------------------------------------------------------------------------------

    def checkpoint_titles(self) -> list:
        r = self.get("/sdapi/v1/sd-models", timeout_s=60)
        if not r.ok:
            raise RuntimeError(f"GET /sdapi/v1/sd-models: HTTP {r.status}: {r.text()}")
        return [m.get("title", "") for m in r.json] + [m.get("model_name", "") for m in r.json]

    def current_checkpoint(self) -> str:
        r = self.get("/sdapi/v1/options", timeout_s=60)
        return str((r.json or {}).get("sd_model_checkpoint", "")) if r.ok else ""

    def select_checkpoint(self, name: str) -> None:
        """POST /sdapi/v1/options {"sd_model_checkpoint": name} unless it is already the selected one (new Forge
        loads the model lazily, on the next generation)."""
        current = self.current_checkpoint()
        if current == name or current.startswith(name + ".") or current.startswith(name + " "):
            return
        r = self.post("/sdapi/v1/options", {"sd_model_checkpoint": name})
        if not r.ok:
            raise RuntimeError(f"selecting checkpoint {name}: HTTP {r.status}: {r.text()}")

    def script_titles(self) -> dict:
        r = self.get("/sdapi/v1/scripts", timeout_s=60)
        if not r.ok:
            raise RuntimeError(f"GET /sdapi/v1/scripts: HTTP {r.status}: {r.text()}")
        return r.json

    def txt2img_raw(self, payload: dict) -> Response:
        return self.post("/sdapi/v1/txt2img", payload)

    def txt2img(self, payload: dict) -> Txt2ImgResult:
        """POST /sdapi/v1/txt2img; raises AssertionError with the error body when the answer is not 200."""
        r = self.txt2img_raw(payload)
        if not r.ok:
            raise AssertionError(f"txt2img answered HTTP {r.status} after {r.elapsed_s:.1f}s: {r.text()}")
        images = (r.json or {}).get("images") or []
        info_raw = (r.json or {}).get("info") or "{}"
        info = json.loads(info_raw) if isinstance(info_raw, str) else dict(info_raw)
        return Txt2ImgResult(response=r, png_bytes=[b64_to_bytes(b) for b in images], info=info)


def error_messages(response: Response) -> list:
    """The message strings of an API error body ("detail", "errors", also FastAPI's list-of-dicts form)."""
    body = response.json
    out = []

    def collect(value):
        if isinstance(value, str):
            if value:
                out.append(value)
        elif isinstance(value, dict):
            for key in ("detail", "errors", "msg", "message", "error"):
                if key in value:
                    collect(value[key])
        elif isinstance(value, list):
            for item in value:
                collect(item)

    if body is None:
        out.append(response.text())
    else:
        collect(body)
    return out


# --- images --------------------------------------------------------------------------------------------------

def b64_to_bytes(data: str) -> bytes:
    if data.startswith("data:"):
        data = data.split(",", 1)[1]
    return base64.b64decode(data)


def decode_png(raw: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def png_b64(image, data_url: bool = False) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    text = base64.b64encode(buf.getvalue()).decode("ascii")
    return "data:image/png;base64," + text if data_url else text


def newest_png(folder: str, under: str = "txt2img-images") -> str | None:
    """The most recently modified .png under folder/under (Forge saves to <outputs>/txt2img-images/<date>/)."""
    root = os.path.join(os.path.expanduser(folder), under)
    best, best_mtime = None, -1.0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.lower().endswith(".png"):
                path = os.path.join(dirpath, name)
                mtime = os.stat(path).st_mtime
                if mtime > best_mtime:
                    best, best_mtime = path, mtime
    return best
