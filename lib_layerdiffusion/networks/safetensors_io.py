"""Reading .safetensors files safely: the header is checked before torch touches the data.

Only safetensors are ever loaded (never pickle). A truncated or corrupt file is reported with a message that
names the file and says what to do, and is never handed to torch.
"""
from __future__ import annotations

import json
import os
import struct

import torch
from safetensors.torch import load_file

from ..errors import ModelFileError

# A header larger than this is not a real header (the format itself caps it at 100 MB).
_MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}


def _corrupt(path: str, why: str) -> ModelFileError:
    return ModelFileError(
        f"[LayerDiffuse] The model file {path} is damaged ({why}). Delete it and generate again to "
        f"download it anew, or replace it with a good copy."
    )


def read_header(path: str) -> dict:
    """Return the tensor table of a safetensors file ({name: {dtype, shape, data_offsets}}), checked
    against the file's size. Raises ModelFileError for a missing, truncated or malformed file."""
    if not os.path.isfile(path):
        raise ModelFileError(f"[LayerDiffuse] The model file {path} does not exist.")
    size = os.path.getsize(path)
    if size < 8:
        raise _corrupt(path, f"only {size} bytes")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
            raise _corrupt(path, "not a safetensors file or cut short in its header")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _corrupt(path, "its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its safetensors header is not a table")
    header.pop("__metadata__", None)
    data_len = size - 8 - header_len
    end = 0
    for name, info in header.items():
        try:
            begin, stop = info["data_offsets"]
            if not (isinstance(begin, int) and isinstance(stop, int)):
                raise TypeError("data_offsets must be integers")
            count = 1
            for d in info["shape"]:
                count *= int(d)
            item = _DTYPE_SIZES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"tensor {name!r} is described wrongly") from None
        if stop - begin != count * item or begin < 0:
            raise _corrupt(path, f"tensor {name!r} has the wrong byte length")
        end = max(end, stop)
    if end > data_len:
        raise _corrupt(path, f"it is truncated: {data_len} data bytes of {end}")
    return header


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load every tensor of a checked safetensors file onto the CPU."""
    read_header(path)
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # safetensors raises its own error types; any of them means a bad file
        raise _corrupt(path, str(e)) from None
