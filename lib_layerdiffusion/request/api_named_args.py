"""Named LayerDiffuse arguments over Forge's HTTP API.

Forge copies `alwayson_scripts[...]["args"]` into the script's slots by position (modules/api/api.py
init_script_args), so a dict there would fail inside Forge. This ASGI middleware rewrites
`"args": {...named...}` into `"args": [{...named...}]` for the txt2img / img2img endpoints before Forge reads
the body; the script then reads the dict in its first slot (args.LayerDiffuseArgs.from_script_args).
Args that are neither a list nor an object (a string would reach the script one character per slot; a number
or null fails inside Forge) are answered here with HTTP 422 and a `[LayerDiffuse]` message, in the shape of
Forge's own API errors (modules/api/api.py handle_exception).
Any other request, or a body that is not JSON, passes through untouched.
"""
from __future__ import annotations

import json

from ..errors import LayerDiffuseError
from .args import args_shape_error

ENDPOINTS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")


def rewrite_body(body: bytes, title: str = "LayerDiffuse") -> bytes:
    """The body with our named args wrapped in a list; raises InvalidArgumentError for args that are neither a
    list nor an object."""
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
        if name.casefold() != title.casefold() or not isinstance(entry, dict) or "args" not in entry:
            continue
        error = args_shape_error(entry["args"])
        if error is not None:
            raise error
        if isinstance(entry["args"], dict):
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
        try:
            body = rewrite_body(body, self.title)
        except LayerDiffuseError as e:
            await _send_error(send, e)
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app(dict(scope, headers=headers),
                       _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def error_body(error: LayerDiffuseError) -> bytes:
    """The JSON body Forge's API gives for an exception (modules/api/api.py handle_exception)."""
    return json.dumps({"error": type(error).__name__, "detail": error.detail, "body": "",
                       "errors": str(error)}).encode("utf-8")


async def _send_error(send, error: LayerDiffuseError) -> None:
    body = error_body(error)
    await send({"type": "http.response.start", "status": error.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _replay(messages, receive):
    pending = list(messages)

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
