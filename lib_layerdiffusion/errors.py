"""The errors LayerDiffuse raises for problems a user can fix.

Each message names what to change. The Forge script turns them into a message in the UI / an HTTP error
instead of a traceback, so every user-facing failure is one of these classes.
"""


class LayerDiffuseError(Exception):
    """A problem with the request or the environment that the user can act on.

    `status_code` and `detail` are what Forge's API error handler (modules/api/api.py, handle_exception) puts
    in the HTTP response, so an API client gets the message instead of a bare 500.
    """

    status_code = 422

    def __init__(self, message: str):
        super().__init__(message)
        self.detail = message
        self.status_code = type(self).status_code


class ModelFileError(LayerDiffuseError):
    """A LayerDiffuse model file is missing, cannot be downloaded, is corrupt or has the wrong layout."""

    status_code = 500


class InvalidArgumentError(LayerDiffuseError):
    """A LayerDiffuse argument (method, weight, image, ...) is not usable as given."""


class UnsupportedModelError(LayerDiffuseError):
    """The loaded checkpoint is not the base model the chosen method was trained for."""


class HookError(LayerDiffuseError):
    """An unexpected failure inside one of LayerDiffuse's hooks (out of memory, a host API that changed, a bug).
    Forge's script runner would log it and carry on unpatched, or decode with a stale latent, so it stops the
    generation like any other LayerDiffuseError; the original traceback goes to the log."""

    status_code = 500


def as_user_error(error: Exception, stage: str) -> LayerDiffuseError:
    """`error` as the LayerDiffuseError that stops the generation: itself if it is one, else a HookError saying
    at which stage it happened and what the user can try."""
    if isinstance(error, LayerDiffuseError):
        return error
    # torch.OutOfMemoryError, or a RuntimeError saying so (older torch, other backends)
    if (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or "out of memory" in str(error).lower()):
        hint = "Out of memory: use a smaller size or batch, fewer decoder passes (Settings → LayerDiffuse), or free memory."
    else:
        hint = "The full error is in the console; please report it with the console output."
    return HookError(f"[LayerDiffuse] {stage} failed ({type(error).__name__}: {error}). The generation was stopped "
                     f"so that no image comes out with a wrong transparency. {hint}")
