"""Named LayerDiffuse arguments over Forge's HTTP API.

Forge copies `alwayson_scripts[...]["args"]` into the script's slots by position (modules/api/api.py
init_script_args), so a dict there would fail inside Forge. This ASGI middleware rewrites
`"args": {...named...}` into `"args": [{...named...}]` for the txt2img / img2img endpoints before Forge reads
the body; the script then reads the dict in its first slot (args.LayerDiffuseArgs.from_script_args).
Any other request, or a body that is not JSON, passes through untouched.
"""
from __future__ import annotations

import json

ENDPOINTS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")


def rewrite_body(body: bytes, title: str = "LayerDiffuse") -> bytes:
    if title.lower().encode() not in body.lower():  # most requests: not ours, no JSON parsing of their images
        return body
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    scripts = data.get("alwayson_scripts") if isinstance(data, dict) else None
    if not isinstance(scripts, dict):
        return body
    changed = False
    for name, entry in scripts.items():
        if name.casefold() == title.casefold() and isinstance(entry, dict) and isinstance(entry.get("args"), dict):
            entry["args"] = [entry["args"]]
            changed = True
    return json.dumps(data).encode("utf-8") if changed else body


class NamedArgsMiddleware:
    def __init__(self, app, title: str = "LayerDiffuse"):
        self.app = app
        self.title = title

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith(ENDPOINTS):
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        body = rewrite_body(body, self.title)
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app(dict(scope, headers=headers),
                       _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages, receive):
    pending = list(messages)

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
