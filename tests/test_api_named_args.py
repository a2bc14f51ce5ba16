"""Named args over the API: the middleware in front of a real Starlette app that reads args by position,
as Forge's init_script_args does."""
import json

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from lib_layerdiffusion.request.api_named_args import NamedArgsMiddleware, rewrite_body
from lib_layerdiffusion.request.args import LayerDiffuseArgs


async def txt2img(request: Request):
    body = await request.json()
    args = body["alwayson_scripts"]["LayerDiffuse"]["args"]
    slots = [None] * 12
    for i in range(min(len(slots), len(args))):  # modules/api/api.py init_script_args copies by index
        slots[i] = args[i]
    parsed = LayerDiffuseArgs.from_script_args(*slots)
    return JSONResponse({"method": parsed.method.value, "weight": parsed.weight, "enabled": parsed.enabled})


def client():
    app = Starlette(routes=[Route("/sdapi/v1/txt2img", txt2img, methods=["POST"]),
                            Route("/other", txt2img, methods=["POST"])],
                    middleware=[Middleware(NamedArgsMiddleware)])
    return TestClient(app, raise_server_exceptions=False)


def test_a_dict_of_named_args_reaches_the_script():
    named = {"enabled": True, "method": "(SDXL) From Background to Blending", "weight": 0.5}
    r = client().post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {"LayerDiffuse": {"args": named}}})
    assert r.status_code == 200
    assert r.json() == {"method": "(SDXL) From Background to Blending", "weight": 0.5, "enabled": True}


def test_positional_lists_pass_unchanged():
    body = {"alwayson_scripts": {"LayerDiffuse": {"args": [True, "(SDXL) From Foreground to Blending", 0.25]}}}
    raw = json.dumps(body).encode()
    assert rewrite_body(raw) is raw
    assert client().post("/sdapi/v1/txt2img", json=body).json()["weight"] == 0.25


def test_other_bodies_and_paths_untouched():
    assert rewrite_body(b"not json") == b"not json"
    assert rewrite_body(b'{"alwayson_scripts": {"Other": {"args": {"a": 1}}}}') == \
        b'{"alwayson_scripts": {"Other": {"args": {"a": 1}}}}'
    r = client().post("/other", json={"alwayson_scripts": {"LayerDiffuse": {"args": {"enabled": True}}}})
    assert r.status_code == 500  # not rewritten: the dict reached the positional copy, which fails on it


def test_args_that_are_neither_list_nor_object_answer_422():
    for value, kind in [("yes please", "a string"), (7, "a number"), (None, "null")]:
        r = client().post("/sdapi/v1/txt2img", json={"alwayson_scripts": {"LayerDiffuse": {"args": value}}})
        assert r.status_code == 422
        body = r.json()
        assert body["error"] == "InvalidArgumentError" and body["detail"].startswith("[LayerDiffuse]")
        assert "must be a list" in body["detail"] and "object (dict)" in body["detail"]
        assert body["detail"].endswith(f"not {kind}.") and body["errors"] == body["detail"]


def test_rewrite_body_raises_for_a_string_and_leaves_other_scripts_alone():
    import pytest
    from lib_layerdiffusion.errors import InvalidArgumentError
    with pytest.raises(InvalidArgumentError, match="not a string"):
        rewrite_body(b'{"alwayson_scripts": {"layerdiffuse": {"args": "yes please"}}}')
    other = b'{"prompt": "LayerDiffuse", "alwayson_scripts": {"Other": {"args": "x"}, "LayerDiffuse": {}}}'
    assert rewrite_body(other) is other


def test_a_string_without_the_middleware_still_names_the_problem():
    # a path the middleware does not watch: Forge's positional copy splits the string, the script recognises it
    import pytest
    from lib_layerdiffusion.errors import InvalidArgumentError
    app = Starlette(routes=[Route("/other", txt2img, methods=["POST"])], middleware=[Middleware(NamedArgsMiddleware)])
    with pytest.raises(InvalidArgumentError, match="not a string"):  # Forge's API handler answers it with 422
        TestClient(app).post("/other", json={"alwayson_scripts": {"LayerDiffuse": {"args": "yes please"}}})
