"""A local HTTP server that answers /sdapi/v1/txt2img like Forge's API with LayerDiffuse, for tests/test_client.py.

It records every request's JSON. What it does for a prompt is chosen by words in the prompt:
  FAIL422   answers HTTP 422 with a LayerDiffuse message, as Forge's API error handler does
  DROP      reads the request, then closes the connection without answering
  SLOW      sleeps `slow_s` seconds before answering (longer than the client's --timeout)
  SHUFFLE   puts the previews before the RGBA images
The transparent methods answer N RGBA images then N RGB previews for a batch of N; the others N RGB images.
"""
from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

OPAQUE_METHOD_WORDS = ("to Blending", "to Background", "Blending to Foreground")
LAYERDIFFUSE_422 = "[LayerDiffuse] This method needs a foreground image: set fg_image."


def png_bytes(mode: str, size=(8, 8), color=None) -> bytes:
    color = color if color is not None else ((200, 30, 30, 128) if mode == "RGBA" else (128, 128, 128))
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def is_opaque_method(method: str) -> bool:
    return any(word in method for word in OPAQUE_METHOD_WORDS)


class FakeForge:
    def __init__(self, api_enabled: bool = True, slow_s: float = 1.5):
        self.api_enabled = api_enabled
        self.slow_s = slow_s
        self.requests: list = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.next_seed = 1000
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeForge:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    @property
    def prompts(self) -> list:
        return [r["prompt"] for r in self.requests]

    def answer(self, payload: dict) -> dict:
        batch = int(payload.get("batch_size", 1))
        seed = int(payload.get("seed", -1))
        if seed == -1:
            with self.lock:
                seed = self.next_seed
                self.next_seed += 100
        method = payload["alwayson_scripts"]["LayerDiffuse"]["args"][0].get("method", "")
        w, h = 8, 8
        if is_opaque_method(method):
            images = [png_bytes("RGB", (w, h), (10 * i, 20, 30)) for i in range(batch)]
        else:
            rgba = [png_bytes("RGBA", (w, h), (10 * i, 0, 0, 100)) for i in range(batch)]
            previews = [png_bytes("RGB", (w, h), (255, 255, 10 * i)) for i in range(batch)]
            images = previews + rgba if "SHUFFLE" in payload["prompt"] else rgba + previews
        info = {"prompt": payload["prompt"], "seed": seed, "all_seeds": [seed + i for i in range(batch)],
                "infotexts": [f"{payload['prompt']}\nSteps: {payload.get('steps')}, Seed: {seed + i}"
                              for i in range(batch)]}
        return {"images": [base64.b64encode(b).decode("ascii") for b in images], "parameters": payload,
                "info": json.dumps(info)}

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, obj) -> None:
                body = json.dumps(obj).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (timeout test)
                    pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not fake.api_enabled or self.path != "/sdapi/v1/txt2img":
                    self._send(404, {"detail": "Not Found"})
                    return
                payload = json.loads(raw)
                with fake.lock:
                    fake.requests.append(payload)
                prompt = payload.get("prompt", "")
                if "FAIL422" in prompt:
                    self._send(422, {"error": "InvalidArgumentError", "detail": LAYERDIFFUSE_422, "body": "",
                                     "errors": LAYERDIFFUSE_422})
                    return
                if "DROP" in prompt:
                    self.close_connection = True
                    return  # nothing written: the client sees the connection closed
                if "SLOW" in prompt and fake.stop.wait(fake.slow_s):
                    return  # the test is over
                self._send(200, fake.answer(payload))

        return Handler
