"""Turning a published torch pickle (``.pth``) into a ``.safetensors`` file, once, without running its code.

FLUX.1's LayerDiffuse transparent VAE is published only as ``TransparentVAE.pth`` (RedAIGC/Flux-version-LayerDiffuse),
a pickled ``OrderedDict`` of bf16 tensors: ``decoder.*`` (the transparent decoder), ``encoder.*`` (the offset
encoder) and, inferred from its size, ``sd_vae.*`` (the stock FLUX.1 VAE, which this package does not use).

* :func:`convert_pickle_checkpoint` reads the pickle with ``torch.load(path, map_location="cpu", weights_only=True)``:
  torch's restricted unpickler builds tensors and plain containers only, so a pickle holding any other object
  (a class instance, a ``__reduce__`` payload that would call a function) is refused before anything in it runs.
  The tensors are then checked against a manifest (the required sections strictly: every key, shape and a
  floating dtype; optional sections may be present or not; nothing else may be there), and only then the
  required tensors are written, in their own dtype, as ``<name>.safetensors`` beside the pickle (through a
  temporary file, so a half-written file never carries the final name).
* :func:`ensure_converted` returns that ``.safetensors`` when it is already there and valid, without opening the
  pickle; otherwise it converts.
* :func:`check_converted` checks a converted file from its header alone.

A file failing any check is reported with its name (:class:`~lib_layerdiffusion.errors.ModelFileError`), and
nothing is loaded or written. The default manifest, ``manifests/flux_transparent_vae.json``, lists the
``decoder.*`` / ``encoder.*`` tensors of ``TransparentVAE.pth`` with their shapes and the ``sd_vae.*`` key names.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch
from safetensors.torch import save_file

from ..errors import ModelFileError
from .safetensors_io import read_header

logger = logging.getLogger(__name__)

#: The manifest of FLUX.1's ``TransparentVAE.pth`` shipped with the package.
DEFAULT_MANIFEST = Path(__file__).resolve().parent / "manifests" / "flux_transparent_vae.json"
#: Sections whose tensors must all be there (with these shapes) and are written to the .safetensors.
REQUIRED_SECTIONS = ("flux_transparent_decoder", "flux_transparent_encoder")
#: Sections that may be in the pickle, whole, in part or not at all; never written.
OPTIONAL_SECTIONS = ("flux_vae",)
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")

_FLOAT_HEADER_DTYPES = {"F16", "BF16", "F32", "F64"}


@dataclass(frozen=True)
class PickleManifest:
    """What a pickle must hold.

    required: key -> shape of every tensor that must be there and is kept; optional: key -> shape (None: any
    shape) of tensors that may be there and are dropped; title: what the file is, for messages; filename: the
    published file name, for messages."""

    required: Mapping[str, tuple[int, ...]]
    optional: Mapping[str, tuple[int, ...] | None]
    title: str
    filename: str


ManifestSource = PickleManifest | Mapping | str | os.PathLike | None

_default_manifest: PickleManifest | None = None
_default_lock = threading.Lock()


def load_manifest(source: ManifestSource = None) -> PickleManifest:
    """A PickleManifest from a manifest JSON path, its parsed content, or None (the shipped FLUX.1 manifest).

    The JSON holds the sections of REQUIRED_SECTIONS as {key: shape}, and optionally those of OPTIONAL_SECTIONS as
    {key: shape} or a list of keys; "title" and "filename" name the file in messages; other entries are notes."""
    global _default_manifest
    if isinstance(source, PickleManifest):
        return source
    if source is None:
        with _default_lock:
            if _default_manifest is None:
                _default_manifest = load_manifest(DEFAULT_MANIFEST)
            return _default_manifest
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as f:
            data = json.load(f)
    elif isinstance(source, Mapping):
        data = source
    else:
        raise TypeError(f"a manifest is a path, a mapping or None, not {type(source).__name__}")
    missing = [name for name in REQUIRED_SECTIONS if name not in data]
    if missing:
        raise ValueError(f"the manifest has no section {', '.join(missing)}")
    required: dict[str, tuple[int, ...]] = {}
    for name in REQUIRED_SECTIONS:
        required.update({key: tuple(int(d) for d in shape) for key, shape in data[name].items()})
    optional: dict[str, tuple[int, ...] | None] = {}
    for name in OPTIONAL_SECTIONS:
        section = data.get(name) or {}
        if isinstance(section, Mapping):
            optional.update({key: tuple(int(d) for d in shape) for key, shape in section.items()})
        else:
            optional.update({key: None for key in section})
    return PickleManifest(required=MappingProxyType(required), optional=MappingProxyType(optional),
                          title=str(data.get("title", "LayerDiffuse model file")),
                          filename=str(data.get("filename", "the published file")))


def converted_path(pickle_path: str | os.PathLike) -> str:
    """Where the conversion of a pickle goes: beside it, ``<name>.safetensors``."""
    return os.path.splitext(os.fspath(pickle_path))[0] + ".safetensors"


def is_pickle_path(path: str | os.PathLike) -> bool:
    """Whether a path names a torch pickle (by its suffix)."""
    return os.fspath(path).lower().endswith(PICKLE_SUFFIXES)


# --------------------------------------------------------------------------------------------- checks

def _describe(keys, limit: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def _layout_problems(found: Mapping[str, tuple[tuple[int, ...], bool] | None],
                     manifest: PickleManifest, optional_allowed: bool) -> list[str]:
    """What is wrong with a file holding `found` (key -> (shape, is floating point), or None for something that is
    not a tensor) against the manifest; [] when nothing is."""
    problems = []
    missing = sorted(k for k in manifest.required if k not in found)
    allowed = manifest.optional if optional_allowed else {}
    unexpected = sorted(k for k in found if k not in manifest.required and k not in allowed)
    if missing:
        problems.append(f"missing tensors: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected entries: {_describe(unexpected)}")
    wrong = []
    for key in sorted(found):
        expected = manifest.required.get(key, allowed.get(key))
        if key not in manifest.required and key not in allowed:
            continue
        info = found[key]
        if info is None:
            wrong.append(f"{key} is not a tensor")
        elif not info[1]:
            wrong.append(f"{key} is not a floating-point tensor")
        elif expected is not None and info[0] != expected:
            wrong.append(f"{key} has shape {info[0]}, expected {expected}")
    if wrong:
        problems.append("; ".join(wrong[:5]) + (f" ({len(wrong)} tensors wrong in all)" if len(wrong) > 5 else ""))
    return problems


def check_converted(path: str | os.PathLike, manifest: ManifestSource = None) -> dict:
    """Check a converted .safetensors from its header: exactly the manifest's required tensors, with their shapes,
    in a floating dtype, and the file as long as its header says. Returns the header; raises ModelFileError."""
    manifest = load_manifest(manifest)
    path = os.fspath(path)
    header = read_header(path)  # raises for a missing, truncated or malformed file
    found = {key: (tuple(int(d) for d in info["shape"]), info["dtype"] in _FLOAT_HEADER_DTYPES)
             for key, info in header.items()}
    problems = _layout_problems(found, manifest, optional_allowed=False)
    if problems:
        raise ModelFileError(
            f"[LayerDiffuse] {path} is not a conversion of {manifest.title} ({manifest.filename}): "
            f"{'; '.join(problems)}.")
    return header


def _refused(path: str, error: BaseException, manifest: PickleManifest) -> ModelFileError:
    text = str(error)
    # torch >= 2.4 says "Unsupported global: GLOBAL mod.name", older versions "Unsupported class mod.name"
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"Unsupported class ([\w.]+)", text)
    if refused:
        return ModelFileError(
            f"[LayerDiffuse] {path} was refused and not loaded: besides tensors it holds a Python object "
            f"({refused.group(1)}), and unpickling that could run code. Only plain tensor files are converted. "
            f"Replace it with {manifest.filename} as published.")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # the restricted unpickler's own words ("Unsupported operand 60" for an HTML page), else the first line
    detail = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
    return _damaged(path, f"{type(error).__name__}: {detail}" if detail else type(error).__name__, manifest)


def _damaged(path: str, detail: str, manifest: PickleManifest) -> ModelFileError:
    return ModelFileError(
        f"[LayerDiffuse] {path} is damaged or not a torch checkpoint ({detail}). Replace it with "
        f"{manifest.filename} as published.")


def read_pickle_state(path: str | os.PathLike, manifest: ManifestSource = None) -> dict[str, torch.Tensor]:
    """The required tensors of a checked pickle (CPU, their own dtype). Raises ModelFileError naming the file when
    it cannot be read, holds anything but tensors and plain containers, or does not match the manifest."""
    manifest = load_manifest(manifest)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"[LayerDiffuse] The model file {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the restricted unpickler met something other than tensors
        raise _refused(path, e, manifest) from None
    except Exception as e:  # noqa: BLE001 - a truncated zip, an HTML error page, ...: never a usable file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise _damaged(path, f"{type(e).__name__}: {first}" if first else type(e).__name__, manifest) from None
    if not isinstance(state, Mapping):
        raise ModelFileError(
            f"[LayerDiffuse] {path} is not {manifest.title}: it holds a {type(state).__name__}, not a table of "
            f"tensors. Replace it with {manifest.filename} as published.")
    found = {str(key): ((tuple(value.shape), value.is_floating_point()) if isinstance(value, torch.Tensor) else None)
             for key, value in state.items()}
    problems = _layout_problems(found, manifest, optional_allowed=True)
    if problems:
        raise ModelFileError(
            f"[LayerDiffuse] {path} is not {manifest.title}: {'; '.join(problems)}. Replace it with "
            f"{manifest.filename} as published.")
    return {key: state[key] for key in sorted(manifest.required)}


def _own_memory(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors that share no memory (safetensors refuses shared or strided ones)."""
    result, seen = {}, set()
    for key, tensor in tensors.items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(tensor.untyped_storage().data_ptr())
        result[key] = tensor
    return result


def convert_pickle_checkpoint(pickle_path: str | os.PathLike, manifest: ManifestSource = None,
                              destination: str | os.PathLike | None = None) -> str:
    """Convert a checked pickle to .safetensors and return the new file's path.

    pickle_path: the .pth; manifest: what it must hold (default: FLUX.1's TransparentVAE.pth); destination:
    where to write (default: ``<name>.safetensors`` beside the pickle; an existing file there is replaced).
    Only the manifest's required tensors are written, in their own dtype. Raises ModelFileError (naming the
    file) when the pickle is refused, damaged or has the wrong layout, or the result cannot be written; nothing
    is written then."""
    manifest = load_manifest(manifest)
    pickle_path = os.fspath(pickle_path)
    destination = os.fspath(destination) if destination is not None else converted_path(pickle_path)
    logger.info("[LayerDiffuse] Converting %s to %s (once)", pickle_path, destination)
    tensors = _own_memory(read_pickle_state(pickle_path, manifest))
    tmp = f"{destination}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        save_file(tensors, tmp, metadata={"format": "pt", "converted_from": os.path.basename(pickle_path)})
        del tensors
        check_converted(tmp, manifest)
        # safetensors writes owner-only files; give the conversion its source's permissions
        os.chmod(tmp, stat.S_IMODE(os.stat(pickle_path).st_mode))
        os.replace(tmp, destination)
    except ModelFileError:
        _remove_quietly(tmp)
        raise
    except Exception as e:  # noqa: BLE001 - disk full, read-only folder, ...
        _remove_quietly(tmp)
        raise ModelFileError(
            f"[LayerDiffuse] Could not write {destination}, the .safetensors conversion of {pickle_path} "
            f"({type(e).__name__}: {e}). Free some space or make the folder writable.") from None
    logger.info("[LayerDiffuse] Wrote %s; only it is read from now on", destination)
    return destination


def ensure_converted(pickle_path: str | os.PathLike, manifest: ManifestSource = None) -> str:
    """The path of the .safetensors conversion of a pickle, converting it first when it is not there.

    A conversion already there is checked from its header and returned; the pickle is then not opened (nor
    needed). A conversion there that fails the check is reported, not replaced."""
    manifest = load_manifest(manifest)
    destination = converted_path(pickle_path)
    if os.path.isfile(destination):
        try:
            check_converted(destination, manifest)
        except ModelFileError as e:
            raise ModelFileError(
                f"{e} Delete it to convert {os.path.basename(os.fspath(pickle_path))} again.") from None
        return destination
    return convert_pickle_checkpoint(pickle_path, manifest, destination)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
