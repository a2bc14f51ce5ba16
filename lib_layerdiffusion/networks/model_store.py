"""The LayerDiffuse model files: where they come from, where they live, and loading them.

Host-independent (no Forge import). The Forge script creates one :class:`ModelStore` per configuration::

    store = ModelStore(os.path.join(models_path, "layer_model"), allow_download=opts_allow_download)
    state_dict = store.load("vae_transparent_decoder")

Resolving a file (:meth:`ModelStore.path`):

* A file already in the folder wins, with no network request at all (``models/layer_model`` in Forge, where
  the original extension put its downloads, so users' existing files are reused).
* Otherwise it is downloaded with ``huggingface_hub.hf_hub_download(..., local_dir=folder)``: the final file is
  ``<folder>/<filename>``, a real file (no symlink into the Hugging Face cache). huggingface_hub shows the
  progress bar, keeps a partial download in ``<folder>/.cache/huggingface/download/`` (``.huggingface/``
  with huggingface_hub 0.23) and resumes it (HTTP Range) on the next attempt, and keeps a small metadata file
  there. An ``HF_ENDPOINT`` mirror is honoured, read when the download starts (not when huggingface_hub was
  imported).
* Offline (``HF_HUB_OFFLINE``, ``allow_download=False``, no connection) a missing file raises
  :class:`~lib_layerdiffusion.errors.ModelFileError` naming the file, the folder and the URL to get it from.
* Every file is checked (safetensors header against the file size) before it is returned or handed to torch.
  A damaged file the user has in the folder is reported, never deleted; a damaged file this store has just
  downloaded is deleted (so that the next attempt downloads it anew) and reported.
* FLUX.1's transparent VAE is published only as a torch pickle, ``TransparentVAE.pth``
  (RedAIGC/Flux-version-LayerDiffuse). Its entry serves ``TransparentVAE.safetensors``: when that is missing, the
  ``.pth`` (found in the folder, else downloaded as above) is converted once by
  :mod:`~lib_layerdiffusion.networks.pickle_conversion` (``torch.load(weights_only=True)``, checked against the
  shipped manifest, only the ``decoder.*`` / ``encoder.*`` tensors written). From then on only the
  ``.safetensors`` is read; the ``.pth`` is left where it is (and may be deleted).

Only safetensors are ever loaded (a pickle is only ever read by the weights-only unpickler, to convert it).
:meth:`ModelStore.load` keeps the most recently used state dicts in a small bounded, thread-safe cache; a file
replaced on disk (size, mtime_ns or inode changed) is read again.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from ..errors import ModelFileError
from .pickle_conversion import ManifestSource, check_converted, convert_pickle_checkpoint, load_manifest
from .safetensors_io import load_state_dict, read_header

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_ID = "LayerDiffusion/layerdiffusion-v1"
REVISION = "main"
FLUX_REPO_ID = "RedAIGC/Flux-version-LayerDiffuse"


@dataclass(frozen=True)
class ModelFile:
    """One published LayerDiffuse file.

    name: the table key ("vae_transparent_decoder"); filename: the .safetensors this store serves from the models
    folder; base: the base model family it is for ("sdxl", "sd15" or "flux"); description: what it is;
    repo_id / revision: where it is published; source_filename: the published file when it is a torch pickle
    that is converted into `filename` on first use (None: `filename` itself is published).
    """

    name: str
    filename: str
    base: str
    description: str
    repo_id: str = REPO_ID
    revision: str = REVISION
    source_filename: str | None = None

    @property
    def hub_filename(self) -> str:
        """The file as published (downloaded under this name)."""
        return self.source_filename or self.filename


def _mf(name: str, base: str, description: str) -> ModelFile:
    return ModelFile(name=name, filename=f"{name}.safetensors", base=base, description=description)


_FILES = (
    _mf("layer_xl_transparent_attn", "sdxl", "SDXL UNet patch (attention injection): transparent image"),
    _mf("layer_xl_transparent_conv", "sdxl", "SDXL UNet patch (conv injection): transparent image"),
    _mf("layer_xl_fg2ble", "sdxl", "SDXL UNet patch: foreground to blended image"),
    _mf("layer_xl_fgble2bg", "sdxl", "SDXL UNet patch: foreground and blended image to background"),
    _mf("layer_xl_bg2ble", "sdxl", "SDXL UNet patch: background to blended image"),
    _mf("layer_xl_bgble2fg", "sdxl", "SDXL UNet patch: background and blended image to foreground"),
    _mf("vae_transparent_encoder", "sdxl", "SDXL latent transparency encoder (RGBA image to latent offset)"),
    _mf("vae_transparent_decoder", "sdxl", "SDXL transparent VAE decoder (latent and RGB to RGBA)"),
    _mf("layer_sd15_vae_transparent_encoder", "sd15",
        "SD1.5 latent transparency encoder (RGBA image to latent offset)"),
    _mf("layer_sd15_vae_transparent_decoder", "sd15", "SD1.5 transparent VAE decoder (latent and RGB to RGBA)"),
    _mf("layer_sd15_transparent_attn", "sd15", "SD1.5 UNet patch (attention injection): transparent image"),
    _mf("layer_sd15_joint", "sd15", "SD1.5 UNet patch: foreground, background and blended image together"),
    _mf("layer_sd15_fg2bg", "sd15", "SD1.5 UNet patch: foreground to background"),
    _mf("layer_sd15_bg2fg", "sd15", "SD1.5 UNet patch: background to foreground"),
    ModelFile(name="layerlora", filename="layerlora.safetensors", base="flux",
              description="FLUX.1 transformer LoRA: transparent image (latent transparency)", repo_id=FLUX_REPO_ID),
    ModelFile(name="TransparentVAE", filename="TransparentVAE.safetensors", base="flux",
              description="FLUX.1 transparent VAE decoder and latent transparency encoder (converted from the "
                          "published TransparentVAE.pth)",
              repo_id=FLUX_REPO_ID, source_filename="TransparentVAE.pth"),
)

#: The published files, by name: the 14 of LayerDiffusion/layerdiffusion-v1 and the 2 of
#: RedAIGC/Flux-version-LayerDiffuse (revision main). Read-only.
MODEL_FILES: Mapping[str, ModelFile] = MappingProxyType({f.name: f for f in _FILES})
_BY_FILENAME = {**{f.filename: f for f in _FILES}, **{f.source_filename: f for f in _FILES if f.source_filename}}


def model_file(name: str) -> ModelFile:
    """The table entry for a name ("vae_transparent_decoder") or a filename ("vae_transparent_decoder.safetensors";
    "TransparentVAE.pth" names the entry converted from it).

    Raises ModelFileError for a name that is not in the table."""
    entry = MODEL_FILES.get(name) or _BY_FILENAME.get(name)
    if entry is None:
        raise ModelFileError(
            f"[LayerDiffuse] Unknown model file {name!r}. Known files: {', '.join(MODEL_FILES)}."
        )
    return entry


def _resolve_endpoint(endpoint: str | None) -> str:
    """The hub to use: the explicit endpoint, else $HF_ENDPOINT as it is now, else huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def model_url(name: str, endpoint: str | None = None) -> str:
    """The download URL of a file: ``<endpoint>/<repo>/resolve/<revision>/<filename>`` (for a converted entry,
    the published pickle's).

    endpoint defaults to $HF_ENDPOINT (a mirror), else https://huggingface.co."""
    entry = model_file(name)
    return f"{_resolve_endpoint(endpoint)}/{entry.repo_id}/resolve/{entry.revision}/{entry.hub_filename}"


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as it is now, or as huggingface_hub read it at its import."""
    if _is_true(os.environ.get("HF_HUB_OFFLINE")):
        return True
    constants = getattr(sys.modules.get("huggingface_hub"), "constants", None)
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_version() -> tuple[int, int]:
    import huggingface_hub

    parts = re.findall(r"\d+", huggingface_hub.__version__)[:2]
    return (int(parts[0]), int(parts[1])) if len(parts) == 2 else (0, 0)


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _exception_chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


_CONNECT_ERROR_NAMES = {
    "OfflineModeIsEnabled", "ConnectionRefusedError", "ConnectError", "ConnectTimeout", "NewConnectionError",
    "NameResolutionError", "gaierror", "ProxyError", "SSLError", "MaxRetryError",
}


def _classify(error: BaseException) -> tuple[str, str]:
    """('connect' | 'http' | 'interrupted', detail) for an error out of hf_hub_download."""
    chain = list(_exception_chain(error))
    for e in chain:
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int) and status >= 400:
            return "http", f"the server answered HTTP {status}"
    for e in chain:
        if type(e).__name__ in _CONNECT_ERROR_NAMES:
            return "connect", str(e) or type(e).__name__
    if type(error).__name__ == "LocalEntryNotFoundError":  # the hub could not be reached (HEAD failed)
        return "connect", str(chain[-1]) or type(chain[-1]).__name__
    if any(type(e).__name__ in {"ConnectionError", "Timeout"} for e in chain) and not any(
        type(e).__name__ in {"ChunkedEncodingError", "ProtocolError", "ReadTimeout", "IncompleteRead"} for e in chain
    ):
        return "connect", str(error)
    return "interrupted", f"{type(error).__name__}: {error}"


@dataclass
class _Entry:
    stamp: tuple[int, int, int]
    state_dict: dict[str, torch.Tensor]


class ModelStore:
    """Resolves, downloads, checks and loads the LayerDiffuse model files of one models folder.

    folder: where the files live (Forge: ``models/layer_model``); created when a file is downloaded.
    allow_download: False never touches the network; a missing file is then a ModelFileError.
    endpoint: the hub (or mirror) to download from; None means $HF_ENDPOINT when the download starts, else
        https://huggingface.co.
    cache_size: how many loaded state dicts to keep (most recently used); 0 keeps none. The files are up to
        3.6 GB each, so keep it small.
    download_attempts: how many times an interrupted download is resumed within one call (each attempt resumes
        where the last stopped; a refused connection or an HTTP error is not retried).
    manifests: {name: manifest} for the files converted from a pickle, replacing the manifest shipped with the
        package (a path, a parsed manifest or a ``PickleManifest``; see ``pickle_conversion.load_manifest``).

    No global state: make one instance per configuration. Thread-safe.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        allow_download: bool = True,
        endpoint: str | None = None,
        cache_size: int = 2,
        download_attempts: int = 3,
        manifests: Mapping[str, ManifestSource] | None = None,
    ):
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self.folder = os.path.abspath(os.fspath(folder))
        self.allow_download = bool(allow_download)
        self.endpoint = endpoint
        self.cache_size = int(cache_size)
        self.download_attempts = max(1, int(download_attempts))
        self._manifests = {model_file(name).name: load_manifest(m) for name, m in (manifests or {}).items()}
        self._lock = threading.Lock()  # guards the dicts below
        self._file_locks: dict[str, threading.RLock] = {}
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._checked: dict[str, tuple[int, int, int]] = {}  # name -> stamp of the file whose header was checked

    def __repr__(self) -> str:
        return (f"ModelStore({self.folder!r}, allow_download={self.allow_download}, endpoint={self.endpoint!r}, "
                f"cache_size={self.cache_size})")

    # ----------------------------------------------------------------------------------------------- public

    def url(self, name: str) -> str:
        """The URL this store downloads `name` from."""
        return model_url(name, self.endpoint)

    def local_path(self, name: str) -> str:
        """Where `name` lives in the folder (whether or not it is there yet); for a converted entry, the
        .safetensors conversion."""
        return os.path.join(self.folder, model_file(name).filename)

    def source_path(self, name: str) -> str:
        """Where the published file of `name` is downloaded to: the pickle of a converted entry, else
        local_path."""
        return os.path.join(self.folder, model_file(name).hub_filename)

    def path(self, name: str) -> str:
        """The path of a checked, complete file `<folder>/<filename>`, downloading it first if it is missing
        (for a converted entry: downloading the published pickle if it is missing too, then converting it).

        name: a table key ("vae_transparent_decoder") or a filename. Raises ModelFileError when the file is
        missing and cannot be downloaded (or converted), or is damaged."""
        entry = model_file(name)
        with self._file_lock(entry.name):
            return self._path(entry)

    def load(self, name: str) -> dict[str, torch.Tensor]:
        """The state dict of `name` (CPU tensors), from the cache when the file on disk is unchanged.

        Returns a new dict each call, but the tensors are shared with the cache: do not modify them in place.
        Raises ModelFileError like :meth:`path`."""
        entry = model_file(name)
        with self._file_lock(entry.name):
            hit = self._cached(entry)
            if hit is not None:
                return dict(hit)
            path = self._path(entry)
            stamp = _stamp(os.stat(path))
            with self._lock:  # make room first: never hold cache_size + 1 big state dicts at once
                self._cache.pop(entry.name, None)
                while self._cache and len(self._cache) >= self.cache_size:
                    self._cache.popitem(last=False)
            state_dict = load_state_dict(path)
            logger.info("[LayerDiffuse] Loaded %s (%d tensors) from %s", entry.filename, len(state_dict), path)
            if self.cache_size > 0:
                with self._lock:
                    self._cache[entry.name] = _Entry(stamp, state_dict)
                    self._cache.move_to_end(entry.name)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
            return dict(state_dict)

    def clear_cache(self) -> None:
        """Forget every loaded state dict."""
        with self._lock:
            self._cache.clear()

    def cached_names(self) -> list[str]:
        """The names whose state dicts are cached, least recently used first."""
        with self._lock:
            return list(self._cache)

    # ---------------------------------------------------------------------------------------------- private

    def _file_lock(self, name: str) -> threading.RLock:
        with self._lock:
            return self._file_locks.setdefault(name, threading.RLock())

    def _cached(self, entry: ModelFile) -> dict[str, torch.Tensor] | None:
        try:
            stamp = _stamp(os.stat(self.local_path(entry.name)))
        except OSError:
            stamp = None
        with self._lock:
            hit = self._cache.get(entry.name)
            if hit is None:
                return None
            if hit.stamp != stamp:  # replaced or removed on disk: read it again
                del self._cache[entry.name]
                logger.info("[LayerDiffuse] %s changed on disk; reading it again", entry.filename)
                return None
            self._cache.move_to_end(entry.name)
            return hit.state_dict

    def _manifest(self, entry: ModelFile):
        return self._manifests.get(entry.name) or load_manifest()

    def _check(self, entry: ModelFile, path: str) -> None:
        """read_header (safetensors header against the file size; for a conversion, also its tensors against the
        manifest), once per version of the file."""
        stamp = _stamp(os.stat(path))
        with self._lock:
            if self._checked.get(entry.name) == stamp:
                return
        if entry.source_filename:
            check_converted(path, self._manifest(entry))
        else:
            read_header(path)
        with self._lock:
            self._checked[entry.name] = stamp

    def _path(self, entry: ModelFile) -> str:
        if entry.source_filename:
            return self._converted_path(entry)
        final = self.local_path(entry.name)
        if os.path.isfile(final):
            try:
                self._check(entry, final)
            except ModelFileError as e:  # the user's own file: report it, never delete it
                raise ModelFileError(f"{e} The file is published at {self.url(entry.name)}") from None
            return final

        self._refuse_if_offline(entry)
        self._download(entry, entry.filename, final)
        try:
            self._check(entry, final)
        except ModelFileError as e:  # our own download: remove it so that the next attempt starts afresh
            self._remove(final)
            raise ModelFileError(
                f"{e} The file was just downloaded from {self.url(entry.name)} and has been deleted; generate again "
                f"to download it anew, or download it yourself and put it in {self.folder}."
            ) from None
        return final

    def _refuse_if_offline(self, entry: ModelFile) -> None:
        """Raise the missing-file message when this store may not download (setting off, or HF_HUB_OFFLINE)."""
        if not self.allow_download:
            raise self._missing(entry, "automatic model downloads are turned off in the settings")
        if _hub_offline():
            raise self._missing(entry, "HF_HUB_OFFLINE is set")

    def _converted_path(self, entry: ModelFile) -> str:
        """The .safetensors conversion of a published pickle: checked if there; else converted from the pickle in
        the folder, downloaded first when it is missing too."""
        final = self.local_path(entry.name)
        if os.path.isfile(final):
            try:
                self._check(entry, final)
            except ModelFileError as e:  # never replaced behind the user's back
                raise ModelFileError(
                    f"{e} Delete it to convert {entry.source_filename} (published at {self.url(entry.name)}) "
                    f"again.") from None
            return final

        source = self.source_path(entry.name)
        downloaded = False
        if not os.path.isfile(source):
            self._refuse_if_offline(entry)
            self._download(entry, entry.source_filename, source)
            downloaded = True
        try:
            convert_pickle_checkpoint(source, self._manifest(entry), final)
        except ModelFileError as e:
            if not downloaded:  # the user's own file: report it, never delete it
                raise ModelFileError(f"{e} The file is published at {self.url(entry.name)}") from None
            self._remove(source)  # our own download: the next attempt downloads it anew
            raise ModelFileError(
                f"{e} It was just downloaded from {self.url(entry.name)} and has been deleted; generate again to "
                f"download it anew, or download it yourself and put it in {self.folder}."
            ) from None
        with self._lock:
            self._checked[entry.name] = _stamp(os.stat(final))  # checked while converting
        return final

    def _missing(self, entry: ModelFile, reason: str) -> ModelFileError:
        if entry.source_filename:
            return ModelFileError(
                f"[LayerDiffuse] Neither {entry.filename} nor {entry.source_filename} is in {self.folder}, and "
                f"{entry.source_filename} cannot be downloaded: {reason}. Download {entry.source_filename} from "
                f"{self.url(entry.name)} and put it in {self.folder} (keep the name {entry.source_filename}); it "
                f"is converted to {entry.filename} on first use."
            )
        return ModelFileError(
            f"[LayerDiffuse] The model file {entry.filename} is not in {self.folder} and cannot be downloaded: "
            f"{reason}. Download it from {self.url(entry.name)} and put it in {self.folder} "
            f"(keep the name {entry.filename})."
        )

    def _download(self, entry: ModelFile, filename: str, final: str) -> None:
        """Download `filename` of the entry's repo to `final` (<folder>/<filename>)."""
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            raise self._missing(entry, "the huggingface_hub package is not installed") from None

        endpoint = _resolve_endpoint(self.endpoint)
        kwargs = {
            "repo_id": entry.repo_id, "filename": filename, "revision": entry.revision,
            "local_dir": self.folder, "endpoint": endpoint,
        }
        if _hub_version() < (0, 23):  # older local_dir downloads symlink into the cache and restart by default
            kwargs.update(local_dir_use_symlinks=False, resume_download=True)
        os.makedirs(self.folder, exist_ok=True)
        url = self.url(entry.name)
        logger.info("[LayerDiffuse] Downloading %s from %s into %s", filename, url, self.folder)

        for attempt in range(1, self.download_attempts + 1):
            try:
                result = hf_hub_download(**kwargs)
                break
            except Exception as e:  # every failure becomes a clear ModelFileError
                kind, detail = _classify(e)
                if kind == "connect":
                    raise self._missing(entry, f"could not connect to {endpoint} ({detail})") from e
                if kind == "http":
                    raise self._missing(entry, f"{detail} for {url}") from e
                if attempt < self.download_attempts:
                    logger.warning("[LayerDiffuse] Download of %s interrupted (%s); resuming (attempt %d of %d)",
                                   filename, detail, attempt + 1, self.download_attempts)
                    continue
                raise ModelFileError(
                    f"[LayerDiffuse] The download of {filename} from {url} into {self.folder} was interrupted "
                    f"({detail}). The part already downloaded is kept in {self._partial_dir()} and the download "
                    f"resumes when you generate again; or download the file yourself and put it in {self.folder}."
                ) from e
        self._materialize(result, final)
        logger.info("[LayerDiffuse] Downloaded %s to %s", filename, final)

    def _partial_dir(self) -> str:
        """Where huggingface_hub keeps partial downloads: <folder>/.cache/huggingface/download (0.24 and later)
        or <folder>/.huggingface/download (0.23)."""
        candidates = [os.path.join(self.folder, ".cache", "huggingface", "download"),
                      os.path.join(self.folder, ".huggingface", "download")]
        return next((c for c in candidates if os.path.isdir(c)), candidates[0])

    @staticmethod
    def _materialize(result: str, final: str) -> None:
        """Make `final` a real file, whatever this huggingface_hub version returned (a symlink into its cache
        breaks when the cache is cleared)."""
        if os.path.isfile(final) and not os.path.islink(final):
            return
        source = os.path.realpath(result)
        tmp = f"{final}.tmp-{os.getpid()}-{threading.get_ident()}"
        shutil.copyfile(source, tmp)
        os.replace(tmp, final)

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.remove(path)
        except OSError as e:
            logger.warning("[LayerDiffuse] Could not delete the damaged file %s: %s", path, e)
