"""Command-line client: send prompts to a running Forge (started with --api) with LayerDiffuse on, and write
the transparent PNGs it returns to a folder.

    python -m lib_layerdiffusion.client --prompt "a glass bottle, high quality" --seed 12345 --preview
    python -m lib_layerdiffusion.client --prompts prompts.txt --out renders --url http://127.0.0.1:7860
    python lib_layerdiffusion/client.py ...          (the same, without importing the package)

The prompts file holds one prompt per line (blank lines and lines starting with # are skipped) or, on any line
starting with "{", a JSON object with "prompt" and per-line overrides of the options (width, seed, method,
fg_image, batch_size, ...; see OVERRIDE_KEYS).

Output names: <index:04d>-<slug of prompt>-<seed>[-<n>].png for the transparent (RGBA) images, or the main
images of the methods that return opaque ones, and the same name ending in -preview.png for the checkerboard
previews (written with --preview). <index> is the prompt's 1-based position, <n> the 1-based position in a
batch (only when a prompt gives more than one image). A prompt is skipped when one of its main images is
already there: with a fixed seed its name is known; with a random seed (-1) any seed matches.

Exit status: 0 when every prompt was written or skipped, 1 when any failed, 2 for a usage error (nothing sent),
130 on Ctrl-C.

Standard library only, so that it runs with a bare Python 3.9+ on any machine that can reach Forge.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import http.client
import json
import logging
import os
import re
import socket
import struct
import sys
import tempfile
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("lib_layerdiffusion.client")

DEFAULT_URL = "http://127.0.0.1:7860"
DEFAULT_METHOD = "(SDXL) Only Generate Transparent Image (Attention Injection)"
DEFAULT_OUT = "layerdiffuse_out"
TXT2IMG_PATH = "/sdapi/v1/txt2img"
SCRIPT_NAME = "LayerDiffuse"
SLUG_MAX = 60

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types that carry an alpha channel: 4 = grey + alpha, 6 = RGBA
_ALPHA_COLOUR_TYPES = (4, 6)

# the options a JSONL line may override, with the spellings accepted for each
_OPTION_TYPES: dict[str, type] = {
    "negative_prompt": str, "method": str, "width": int, "height": int, "steps": int, "seed": int,
    "sampler": str, "cfg_scale": float, "weight": float, "stop_at": float, "fg_image": str, "bg_image": str,
    "blend_image": str, "batch_size": int,
    # LayerDiffuse arguments without a command-line option
    "resize_mode": str, "output_origin": bool, "fg_additional_prompt": str, "bg_additional_prompt": str,
    "blend_additional_prompt": str,
}
_KEY_ALIASES = {"sampler_name": "sampler", "ending_step": "stop_at", "cfg": "cfg_scale"}
OVERRIDE_KEYS = tuple(_OPTION_TYPES)
_IMAGE_KEYS = ("fg_image", "bg_image", "blend_image")
_EXTRA_SCRIPT_KEYS = ("resize_mode", "output_origin", "fg_additional_prompt", "bg_additional_prompt",
                      "blend_additional_prompt")


class UsageError(Exception):
    """A problem with the command line or the prompts file, found before anything is sent."""


class FatalError(Exception):
    """Forge cannot be used at all (not reachable, API off, login refused): no point trying the next prompt."""


class PromptFailed(Exception):
    """This prompt failed; the next one may still work."""


# --- prompts ------------------------------------------------------------------------------------------------

@dataclass
class Job:
    index: int                      # 1-based position among the prompts
    prompt: str
    options: dict[str, Any]         # the resolved options (command line, then the line's overrides)
    source: str = ""                # where it came from, for messages ("prompts.txt:12")
    images_b64: dict[str, str] = field(default_factory=dict)


def slugify(text: str, limit: int = SLUG_MAX) -> str:
    """Lower-case ASCII words joined by '-', at most `limit` characters, cut at a word boundary."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")
    if len(slug) > limit:
        cut = slug[:limit]
        slug = cut.rsplit("-", 1)[0] if "-" in cut else cut
    return slug or "prompt"


def _coerce(key: str, value: Any, where: str) -> Any:
    kind = _OPTION_TYPES[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{where}: {key!r} must be true or false, not {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise UsageError(f"{where}: {key!r} must be a whole number, not {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where}: {key!r} must be a number, not {value!r}")
        return float(value)
    if value is None and key in _IMAGE_KEYS:
        return None  # an explicit null drops an image given on the command line
    if not isinstance(value, str):
        raise UsageError(f"{where}: {key!r} must be text, not {value!r}")
    return value


def parse_prompt_line(line: str, where: str) -> tuple[str, dict[str, Any]] | None:
    """(prompt, overrides) of one line of a prompts file, or None for a blank line or a # comment."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if not text.startswith("{"):
        return text, {}
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: a JSON line must be an object")
    prompt = obj.pop("prompt", None)
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError(f"{where}: a JSON line needs a non-empty \"prompt\"")
    overrides: dict[str, Any] = {}
    for raw_key, value in obj.items():
        key = _KEY_ALIASES.get(raw_key.replace("-", "_"), raw_key.replace("-", "_"))
        if key not in _OPTION_TYPES:
            raise UsageError(f"{where}: unknown key {raw_key!r}; known keys: prompt, {', '.join(OVERRIDE_KEYS)}")
        overrides[key] = _coerce(key, value, where)
    return prompt.strip(), overrides


def read_prompts(path: str) -> tuple[list[tuple[str, dict[str, Any], str]], list[str]]:
    """([(prompt, overrides, 'file:line')], [error messages of the bad lines]) of a prompts file ('-' reads
    standard input)."""
    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, "r", encoding="utf-8-sig") as f:
                lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"cannot read the prompts file {path}: {e.strerror or e}") from None
    out, errors = [], []
    for number, line in enumerate(lines, 1):
        where = f"{path}:{number}"
        try:
            parsed = parse_prompt_line(line, where)
        except UsageError as e:
            errors.append(str(e))
            continue
        if parsed is not None:
            out.append((parsed[0], parsed[1], where))
    if not out and not errors:
        raise UsageError(f"{path} holds no prompts")
    return out, errors


def _read_image_b64(path: str, base_dir: str | None, where: str) -> str:
    candidates = [path]
    if base_dir and not os.path.isabs(path):
        candidates.append(os.path.join(base_dir, path))
    for candidate in candidates:
        if os.path.isfile(candidate):
            try:
                with open(candidate, "rb") as f:
                    return base64.b64encode(f.read()).decode("ascii")
            except OSError as e:
                raise UsageError(f"{where}: cannot read {candidate}: {e.strerror or e}") from None
    raise UsageError(f"{where}: image file not found: {path}")


def validate_options(opts: dict[str, Any], where: str) -> None:
    for key in ("width", "height", "steps", "batch_size"):
        if opts[key] < 1:
            raise UsageError(f"{where}: {key} must be at least 1, not {opts[key]}")
    if opts["seed"] < -1:
        raise UsageError(f"{where}: seed must be -1 (random) or a number from 0, not {opts['seed']}")


def build_jobs(args: argparse.Namespace) -> list[Job]:
    defaults = {key: getattr(args, key) for key in OVERRIDE_KEYS if hasattr(args, key)}
    for key in _EXTRA_SCRIPT_KEYS:
        defaults.setdefault(key, None)
    if args.prompt is not None:
        if not args.prompt.strip():
            raise UsageError("--prompt is empty")
        entries, errors = [(args.prompt.strip(), {}, "--prompt")], []
        base_dir = None
    else:
        entries, errors = read_prompts(args.prompts)
        base_dir = None if args.prompts == "-" else os.path.dirname(os.path.abspath(args.prompts))
    # each image file is read once, however many prompts use it
    cache: dict[tuple[str, str | None], str] = {}
    jobs = []
    for index, (prompt, overrides, where) in enumerate(entries, 1):
        opts = dict(defaults)
        opts.update(overrides)
        job = Job(index=index, prompt=prompt, options=opts, source=where)
        try:
            validate_options(opts, where)
            for key in _IMAGE_KEYS:
                path = opts.get(key)
                if path:
                    # command-line paths are relative to the working directory; a JSONL line's also to its file
                    base = base_dir if key in overrides else None
                    if (path, base) not in cache:
                        label = where if key in overrides else "--" + key.replace("_", "-")
                        cache[(path, base)] = _read_image_b64(path, base, label)
                    job.images_b64[key] = cache[(path, base)]
        except UsageError as e:
            errors.append(str(e))
            continue
        jobs.append(job)
    if errors:
        raise UsageError("\n".join(errors))
    return jobs


def build_payload(job: Job) -> dict[str, Any]:
    o = job.options
    script_args: dict[str, Any] = {"enabled": True, "method": o["method"], "weight": o["weight"],
                                   "ending_step": o["stop_at"]}
    script_args.update(job.images_b64)
    for key in _EXTRA_SCRIPT_KEYS:
        if o.get(key) is not None:
            script_args[key] = o[key]
    return {
        "prompt": job.prompt,
        "negative_prompt": o["negative_prompt"],
        "width": o["width"],
        "height": o["height"],
        "steps": o["steps"],
        "seed": o["seed"],
        "sampler_name": o["sampler"],
        "cfg_scale": o["cfg_scale"],
        "batch_size": o["batch_size"],
        "n_iter": 1,
        "do_not_save_grid": True,     # no grid image among the returned ones
        "send_images": True,
        "save_images": False,
        "alwayson_scripts": {SCRIPT_NAME: {"args": [script_args]}},
    }


# --- output files -------------------------------------------------------------------------------------------

def file_stem(job: Job, seed: Any) -> str:
    return f"{job.index:04d}-{slugify(job.prompt)}-{seed}"


def existing_output(job: Job, out_dir: str) -> str | None:
    """The name of a main image this prompt already wrote, if any."""
    seed = job.options["seed"]
    seed_pattern = re.escape(str(seed)) if seed >= 0 else r"(?:\d+|rnd)"
    stem = f"{job.index:04d}-{re.escape(slugify(job.prompt))}-{seed_pattern}"
    pattern = re.compile(stem + r"(?:-\d+)?\.(?:png|jpg|webp)\Z")
    try:
        names = sorted(os.listdir(out_dir))
    except OSError:
        return None
    for name in names:
        if pattern.match(name):
            return os.path.join(out_dir, name)
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a file."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def png_info(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, colour type) from the IHDR chunk of PNG bytes, or None when they are not a PNG."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, _bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    return width, height, colour_type


def has_alpha(data: bytes) -> bool:
    info = png_info(data)
    return info is not None and info[2] in _ALPHA_COLOUR_TYPES


def _image_extension(data: bytes) -> str:
    if data.startswith(PNG_SIGNATURE):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".png"


def decode_images(images: Sequence[Any]) -> list[bytes]:
    out = []
    for i, item in enumerate(images):
        if not isinstance(item, str) or not item:
            continue
        if item.startswith("data:"):
            item = item.split(",", 1)[-1]
        try:
            out.append(base64.b64decode(item, validate=False))
        except (binascii.Error, ValueError):
            raise PromptFailed(f"image {i + 1} of Forge's answer is not valid base64") from None
    return out


def split_images(blobs: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(main images, previews). When any image carries alpha, those are the main images and the others the
    checkerboard previews (the transparent methods); when none does, all are main (the opaque methods)."""
    transparent = [b for b in blobs if has_alpha(b)]
    if transparent:
        return transparent, [b for b in blobs if not has_alpha(b)]
    return list(blobs), []


def _parse_info(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw.strip():
        try:
            parsed = json.loads(raw)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _seed_of(job: Job, info: dict[str, Any]) -> Any:
    if job.options["seed"] >= 0:
        return job.options["seed"]  # the name must be predictable for the skip check of a re-run
    seed = info.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        seeds = info.get("all_seeds") or []
        seed = seeds[0] if seeds and isinstance(seeds[0], int) else None
    return seed if isinstance(seed, int) and seed >= 0 else "rnd"


# --- HTTP ---------------------------------------------------------------------------------------------------

def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


def _error_message(status: int, body: bytes) -> str:
    """The message from the body of an error answer: Forge's {"detail", "errors"} or FastAPI's validation list."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    message = ""
    if isinstance(obj, dict):
        detail = obj.get("detail")
        if isinstance(detail, list):  # FastAPI request validation: [{"loc": [...], "msg": "..."}]
            parts = []
            for d in detail:
                if isinstance(d, dict):
                    loc = ".".join(str(x) for x in d.get("loc", []) if x != "body")
                    parts.append(f"{loc}: {d.get('msg', '')}" if loc else str(d.get("msg", "")))
                else:
                    parts.append(str(d))
            message = "; ".join(parts)
        elif detail:
            message = str(detail)
        errors = obj.get("errors")
        if isinstance(errors, str) and errors.strip() and errors.strip() not in message:
            message = f"{message} ({errors.strip()})" if message else errors.strip()
        if not message and obj.get("error"):
            message = str(obj["error"])
    if not message:
        message = text[:500] or "(empty body)"
    return f"HTTP {status} from Forge: {message}"


def post_json(url: str, payload: dict[str, Any], timeout: float, auth: str | None) -> dict[str, Any]:
    """POST payload to url; the decoded JSON answer. Raises FatalError or PromptFailed."""
    data = json.dumps(payload).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode("utf-8")).decode("ascii")
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    base = url.removesuffix(TXT2IMG_PATH)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        try:
            body = e.read()
        except (OSError, http.client.HTTPException):
            body = b""
        if e.code == 404:
            raise FatalError(f"Forge at {base} has no API (HTTP 404 on {TXT2IMG_PATH}): "
                             "start Forge with --api") from None
        if e.code in (401, 403):
            raise FatalError(f"Forge at {base} refused the login (HTTP {e.code}): pass --api-auth USER:PASSWORD "
                             f"as given to Forge's --api-auth") from None
        raise PromptFailed(_error_message(e.code, body)) from None
    except urllib.error.URLError as e:
        # raised while connecting or sending the request
        reason = e.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise PromptFailed(f"no answer within {timeout:g} s (--timeout) while connecting") from None
        if isinstance(reason, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            raise PromptFailed(f"Forge dropped the connection ({reason})") from None
        raise FatalError(f"Forge is not reachable at {base}: start it, with --api ({reason})") from None
    except (socket.timeout, TimeoutError):
        raise PromptFailed(f"no answer within {timeout:g} s (--timeout); Forge may still be generating it, "
                           f"give a longer --timeout") from None
    except (http.client.RemoteDisconnected, ConnectionError, http.client.IncompleteRead) as e:
        raise PromptFailed(f"Forge dropped the connection before answering ({type(e).__name__}: {e})") from None
    except (http.client.HTTPException, OSError) as e:
        raise PromptFailed(f"the request failed ({type(e).__name__}: {e})") from None
    try:
        answer = json.loads(body.decode("utf-8"))
    except ValueError:
        raise PromptFailed(f"Forge's answer is not JSON: {body[:200]!r}") from None
    if not isinstance(answer, dict):
        raise PromptFailed("Forge's answer is not a JSON object")
    return answer


# --- the run ------------------------------------------------------------------------------------------------

@dataclass
class Totals:
    written: int = 0       # prompts
    skipped: int = 0
    failed: int = 0
    files: int = 0


def run_job(job: Job, total: int, args: argparse.Namespace, url: str, totals: Totals) -> None:
    tag = f"[{job.index}/{total}]"
    found = existing_output(job, args.out)
    if found:
        log.info("%s skipped: %s exists", tag, found)
        totals.skipped += 1
        return
    short = job.prompt if len(job.prompt) <= 60 else job.prompt[:57] + "..."
    log.info("%s generating %r (seed %s)", tag, short, job.options["seed"])
    start = time.monotonic()
    answer = post_json(url, build_payload(job), args.timeout, args.api_auth)
    elapsed = time.monotonic() - start
    blobs = decode_images(answer.get("images") or [])
    if not blobs:
        raise PromptFailed("Forge answered without images")
    main_images, previews = split_images(blobs)
    if any(png_info(b) is None for b in main_images):
        log.warning("%s Forge returned images that are not PNG, so without transparency: set Settings > Saving "
                    "images > File format to png", tag)
    info = _parse_info(answer.get("info"))
    stem = file_stem(job, _seed_of(job, info))
    os.makedirs(args.out, exist_ok=True)
    numbered = len(main_images) > 1
    to_write: list[tuple[str, bytes]] = []
    # previews first: a main image on disk is what marks the prompt done for a re-run
    if args.preview:
        for n, data in enumerate(previews, 1):
            suffix = f"-{n}" if len(previews) > 1 else ""
            to_write.append((os.path.join(args.out, f"{stem}{suffix}-preview{_image_extension(data)}"), data))
    for n, data in enumerate(main_images, 1):
        suffix = f"-{n}" if numbered else ""
        to_write.append((os.path.join(args.out, f"{stem}{suffix}{_image_extension(data)}"), data))
    for path, data in to_write:
        write_atomic(path, data)
        totals.files += 1
        log.info("%s wrote %s (%.1f s)", tag, path, elapsed)
    totals.written += 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lib_layerdiffusion.client",
        description="Generate transparent images with LayerDiffuse through a running Forge's HTTP API "
                    "(start Forge with --api).",
        epilog="A prompts file holds one prompt per line (blank lines and # comments are skipped) or JSON lines: "
               '{"prompt": "...", "seed": 7, "width": 768, "fg_image": "fg.png", ...} with per-line overrides of '
               f"{', '.join(OVERRIDE_KEYS)}. Exit status: 0 all written or skipped, 1 something failed, 2 usage, "
               "130 interrupted.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", metavar="FILE", help="a file of prompts (text or JSONL; - for standard input)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"Forge's address (default {DEFAULT_URL})")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"LayerDiffuse method (default {DEFAULT_METHOD!r})")
    p.add_argument("--negative-prompt", dest="negative_prompt", default="")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=-1, help="-1 (default) picks a random seed for each prompt; "
                                                        "any other value is used for every prompt")
    p.add_argument("--sampler", default="Euler a", help="sampler name (default 'Euler a')")
    p.add_argument("--cfg-scale", dest="cfg_scale", type=float, default=7.0)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=1)
    p.add_argument("--weight", type=float, default=1.0, help="LayerDiffuse weight (default 1.0)")
    p.add_argument("--stop-at", dest="stop_at", type=float, default=1.0,
                   help="LayerDiffuse stop at, a fraction of the steps (default 1.0)")
    p.add_argument("--fg-image", dest="fg_image", metavar="PNG", help="foreground image for the methods that need one")
    p.add_argument("--bg-image", dest="bg_image", metavar="PNG", help="background image")
    p.add_argument("--blend-image", dest="blend_image", metavar="PNG", help="blended image")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each answer (default 600)")
    p.add_argument("--preview", action="store_true", help="also write the checkerboard previews")
    p.add_argument("--api-auth", dest="api_auth", metavar="USER:PASSWORD",
                   help="the login of a Forge started with --api-auth")
    return p


def _setup_logging() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)  # the stderr of this call (tests swap it)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be more than 0")
    handler = _setup_logging()
    try:
        return _run(args)
    except KeyboardInterrupt:
        log.error("interrupted; the images written so far are kept")
        return 130
    finally:
        log.removeHandler(handler)


def _run(args: argparse.Namespace) -> int:
    try:
        jobs = build_jobs(args)
    except UsageError as e:
        log.error("error: %s", e)
        return 2
    url = normalize_url(args.url) + TXT2IMG_PATH
    totals = Totals()
    for job in jobs:
        try:
            run_job(job, len(jobs), args, url, totals)
        except PromptFailed as e:
            totals.failed += 1
            log.error("[%d/%d] failed (%s): %s", job.index, len(jobs), job.source, e)
        except FatalError as e:
            totals.failed += 1
            log.error("[%d/%d] error: %s", job.index, len(jobs), e)
            left = len(jobs) - job.index
            if left:
                log.error("stopped: %d prompt(s) not sent", left)
            break
        except OSError as e:  # writing the output
            totals.failed += 1
            log.error("[%d/%d] failed: cannot write to %s: %s", job.index, len(jobs), args.out, e)
    log.info("done: %d prompt(s) written (%d file(s)), %d skipped, %d failed, of %d",
             totals.written, totals.files, totals.skipped, totals.failed, len(jobs))
    return 1 if totals.failed else 0


if __name__ == "__main__":
    sys.exit(main())
