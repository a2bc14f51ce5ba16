"""Writing a file so that its final name never holds a half-written file: the content goes to a temporary file in
the same folder (same file system, so the rename is atomic), is flushed to disk, then replaces the target."""
from __future__ import annotations

import os
import secrets
from typing import BinaryIO, Callable


def write_atomically(path, write: Callable[[BinaryIO], None]) -> str:
    """Call `write(file)` on a temporary file beside `path`, then move it to `path` (replacing any file there).
    On any error the temporary file is removed and `path` is left as it was. Returns `path` as a string."""
    path = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
    try:
        # "xb" creates the file with the usual permissions (umask), unlike mkstemp's private 0600
        with open(tmp, "xb") as raw:
            write(raw)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return path
