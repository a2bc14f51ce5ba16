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
