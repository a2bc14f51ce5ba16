"""Tests of lib_layerdiffusion.networks.model_store against a fake Hugging Face hub on 127.0.0.1 (tests/fake_hub.py).

Nothing here reaches the internet: HF_ENDPOINT always points at 127.0.0.1 (the fake hub, or a port nobody
listens on), proxies are off for 127.0.0.1, and HF_HOME / the hub cache are in tmp_path.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
import types
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants as hf_constants
import huggingface_hub.file_download as hf_file_download
import huggingface_hub.utils._http as hf_http
import pytest
import torch
from safetensors.torch import save_file

from lib_layerdiffusion.networks import model_store
from lib_layerdiffusion.errors import ModelFileError
from lib_layerdiffusion.networks.model_store import MODEL_FILES, ModelFile, ModelStore, model_url

try:  # tests/ as a package (tests/__init__.py) or as a plain folder on sys.path
    from tests.fake_hub import FakeHub, free_port
except ImportError:
    from fake_hub import FakeHub, free_port

NAME = "vae_transparent_decoder"
FILENAME = "vae_transparent_decoder.safetensors"
CHUNK = 1024


def tensors(seed: int = 0, n: int = 3, numel: int = 4096) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(numel, generator=g) for i in range(n)}


def safetensors_bytes(tmp_path, seed: int = 0, **kw) -> bytes:
    path = tmp_path / f"tmp-{seed}.safetensors"
    save_file(tensors(seed, **kw), str(path))
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.fixture(autouse=True)
def isolated_hf(tmp_path, monkeypatch):
    """No real HF cache, token, proxy or internet for any test."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                "HF_HUB_ENABLE_HF_TRANSFER", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    refused = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", refused)  # tests that want a hub point it at theirs
    # huggingface_hub read its settings at import time: point those at tmp_path / off as well.
    for module in (hf_constants, hf_file_download):
        for attr, value in (("HF_HOME", str(home)), ("HF_HUB_CACHE", str(home / "hub")),
                            ("HUGGINGFACE_HUB_CACHE", str(home / "hub")),
                            ("HF_TOKEN_PATH", str(home / "token")), ("HF_STORED_TOKENS_PATH", str(home / "tokens")),
                            ("HF_HUB_OFFLINE", False), ("HF_HUB_ENABLE_HF_TRANSFER", False),
                            # write the download in small chunks, as a multi-GB file is written in 10 MB ones,
                            # so that a dropped connection leaves a partial file to resume from
                            ("DOWNLOAD_CHUNK_SIZE", CHUNK)):
            if hasattr(module, attr):
                monkeypatch.setattr(module, attr, value)
    # huggingface_hub >=0.2x retries a refused HEAD with 1+2+4+8+8 s of back-off: keep the retries, skip the waits.
    fast_time = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    fast_time.sleep = lambda seconds: None
    for module in (hf_http, hf_file_download):
        if hasattr(module, "time"):
            monkeypatch.setattr(module, "time", fast_time)
    return home


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with FakeHub(files={FILENAME: safetensors_bytes(tmp_path, seed=1)}) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)  # set after huggingface_hub was imported, on purpose
        yield h


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "models" / "layer_model"


def incomplete_files(folder) -> list:
    """huggingface_hub's partial downloads: <folder>/.cache/huggingface/download (>=0.24), .huggingface (0.23)."""
    return [p for hidden in (".cache", ".huggingface") if (folder / hidden).exists()
            for p in (folder / hidden).rglob("*.incomplete")]


# ---------------------------------------------------------------------------------------------------- table

def test_table_has_exactly_the_published_files():
    expected = {
        "layer_xl_transparent_attn", "layer_xl_transparent_conv", "layer_xl_fg2ble", "layer_xl_fgble2bg",
        "layer_xl_bg2ble", "layer_xl_bgble2fg", "vae_transparent_encoder", "vae_transparent_decoder",
        "layer_sd15_vae_transparent_encoder", "layer_sd15_vae_transparent_decoder", "layer_sd15_transparent_attn",
        "layer_sd15_joint", "layer_sd15_fg2bg", "layer_sd15_bg2fg",
    }
    flux = {"layerlora", "TransparentVAE"}
    assert set(MODEL_FILES) == expected | flux and len(MODEL_FILES) == 16
    for name, entry in MODEL_FILES.items():
        assert isinstance(entry, ModelFile)
        assert entry.name == name
        assert entry.filename == f"{name}.safetensors"  # what the store serves is always a safetensors
        assert entry.revision == "main"
        assert entry.description
        if name in flux:
            assert entry.repo_id == "RedAIGC/Flux-version-LayerDiffuse" and entry.base == "flux"
        else:
            assert entry.repo_id == "LayerDiffusion/layerdiffusion-v1" and entry.base in {"sdxl", "sd15"}
        assert entry.source_filename is None or name == "TransparentVAE"
    assert MODEL_FILES["TransparentVAE"].source_filename == MODEL_FILES["TransparentVAE"].hub_filename == (
        "TransparentVAE.pth")
    assert MODEL_FILES["layerlora"].hub_filename == "layerlora.safetensors"
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODEL_FILES[NAME].filename = "x.ckpt"
    with pytest.raises(TypeError):
        MODEL_FILES["evil"] = MODEL_FILES[NAME]


def test_model_url(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT")
    assert model_url(NAME) == (
        "https://huggingface.co/LayerDiffusion/layerdiffusion-v1/resolve/main/vae_transparent_decoder.safetensors")
    assert model_url(FILENAME) == model_url(NAME)
    assert model_url(NAME, "https://hf-mirror.com/") == (
        "https://hf-mirror.com/LayerDiffusion/layerdiffusion-v1/resolve/main/vae_transparent_decoder.safetensors")
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example")
    assert model_url(NAME).startswith("https://mirror.example/LayerDiffusion/")
    with pytest.raises(ModelFileError, match="Unknown model file 'nope'"):
        model_url("nope")


def test_flux_urls(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT")
    base = "https://huggingface.co/RedAIGC/Flux-version-LayerDiffuse/resolve/main/"
    assert model_url("layerlora") == base + "layerlora.safetensors"
    # the converted entry is downloaded as the published pickle; either file name finds it
    assert model_url("TransparentVAE") == model_url("TransparentVAE.pth") == base + "TransparentVAE.pth"
    assert model_url("TransparentVAE.safetensors") == base + "TransparentVAE.pth"


# ------------------------------------------------------------------------------------------------ resolving

def test_file_already_in_folder_is_used_without_any_request(hub, folder, tmp_path):
    folder.mkdir(parents=True)
    (folder / FILENAME).write_bytes(safetensors_bytes(tmp_path, seed=7))
    store = ModelStore(folder)
    assert store.path(NAME) == str(folder / FILENAME)
    assert store.path(FILENAME) == str(folder / FILENAME)
    sd = store.load(NAME)
    assert torch.equal(sd["layer0.weight"], tensors(7)["layer0.weight"])
    assert hub.requests == []


@pytest.mark.parametrize("lfs", [True, False], ids=["lfs-redirect", "regular-file"])
def test_missing_file_is_downloaded_into_the_folder(hub, folder, isolated_hf, lfs):
    hub.lfs = lfs
    store = ModelStore(folder)
    path = store.path(NAME)
    assert path == str(folder / FILENAME)
    assert os.path.isfile(path) and not os.path.islink(path)
    assert (folder / FILENAME).read_bytes() == hub.files[FILENAME]
    assert [r.method for r in hub.requests].count("GET") == 1
    assert not incomplete_files(folder)
    # Nothing lives in the HF cache: clearing it does not break the file.
    assert not (isolated_hf / "hub").exists() or not any((isolated_hf / "hub").rglob("*.safetensors"))
    n = len(hub.requests)
    assert store.path(NAME) == path and store.load(NAME)["layer1.weight"].shape == (4096,)
    assert len(hub.requests) == n  # once there, never asked again


def test_hf_endpoint_set_after_import_is_honoured(hub, folder):
    assert hf_constants.ENDPOINT != hub.url  # huggingface_hub's import-time value is not the fake hub
    ModelStore(folder).path(NAME)
    assert hub.requests


def test_explicit_endpoint_wins_over_hf_endpoint(hub, folder, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    store = ModelStore(folder, endpoint=hub.url)
    assert store.url(NAME).startswith(hub.url + "/")
    assert store.path(NAME) == str(folder / FILENAME)


def test_dropped_connection_resumes_within_the_same_call(hub, folder):
    cut = 4 * CHUNK
    hub.drop_after[FILENAME] = [cut]
    path = ModelStore(folder).path(NAME)
    assert Path(path).read_bytes() == hub.files[FILENAME]
    gets = [r for r in hub.requests if r.method == "GET"]
    assert len(gets) == 2
    assert gets[0].range is None
    assert gets[1].range == f"bytes={cut}-"  # resumed, not restarted


def test_interrupted_download_resumes_on_the_next_call(hub, folder):
    cut = 6 * CHUNK
    hub.drop_after[FILENAME] = [cut]
    store = ModelStore(folder, download_attempts=1)
    with pytest.raises(ModelFileError) as err:
        store.path(NAME)
    msg = str(err.value)
    assert FILENAME in msg and "interrupted" in msg and str(folder) in msg
    assert not (folder / FILENAME).exists()
    [partial] = incomplete_files(folder)
    assert partial.stat().st_size == cut
    assert store.path(NAME) == str(folder / FILENAME)
    assert (folder / FILENAME).read_bytes() == hub.files[FILENAME]
    gets = [r for r in hub.requests if r.method == "GET"]
    assert gets[-1].range == f"bytes={cut}-"
    assert not incomplete_files(folder)


def test_a_symlink_into_the_hf_cache_is_replaced_by_a_real_file(folder, tmp_path, monkeypatch):
    """Whatever a huggingface_hub version returns (older ones symlinked local_dir files into their cache), the
    final file is a real file in the folder that survives clearing the cache."""
    cache = tmp_path / "hf_cache_blob"

    def fake_download(repo_id, filename, local_dir, **kwargs):
        cache.write_bytes(safetensors_bytes(tmp_path, seed=2))
        os.makedirs(local_dir, exist_ok=True)
        os.symlink(cache, os.path.join(local_dir, filename))
        return os.path.join(local_dir, filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    path = ModelStore(folder).path(NAME)
    assert path == str(folder / FILENAME) and not os.path.islink(path)
    cache.unlink()
    assert torch.equal(ModelStore(folder).load(NAME)["layer2.weight"], tensors(2)["layer2.weight"])


# ---------------------------------------------------------------------------------------------- bad files

def test_truncated_file_in_folder_is_reported_and_kept(hub, folder, tmp_path):
    folder.mkdir(parents=True)
    good = safetensors_bytes(tmp_path)
    (folder / FILENAME).write_bytes(good[: len(good) - 100])
    store = ModelStore(folder)
    for call in (store.path, store.load):
        with pytest.raises(ModelFileError) as err:
            call(NAME)
        msg = str(err.value)
        assert str(folder / FILENAME) in msg and "truncated" in msg and model_url(NAME) in msg
    assert (folder / FILENAME).exists()  # the user's file is never deleted
    assert hub.requests == []


@pytest.mark.parametrize("garbage", [b"<!DOCTYPE html><html>Access denied</html>" * 3, b"\x00" * 3, b""],
                         ids=["html-page", "tiny", "empty"])
def test_garbage_file_in_folder_is_reported(folder, garbage, monkeypatch):
    loads = []
    monkeypatch.setattr(model_store, "load_state_dict", lambda p: loads.append(p))
    folder.mkdir(parents=True)
    (folder / FILENAME).write_bytes(garbage)
    with pytest.raises(ModelFileError, match="damaged") as err:
        ModelStore(folder).load(NAME)
    assert FILENAME in str(err.value)
    assert loads == []  # torch never saw it


def test_corrupt_download_is_deleted_and_reported(hub, folder):
    good = hub.files[FILENAME]
    hub.files[FILENAME] = good[: len(good) // 2]  # the server itself sends a cut-short file
    store = ModelStore(folder)
    with pytest.raises(ModelFileError) as err:
        store.path(NAME)
    msg = str(err.value)
    assert FILENAME in msg and "truncated" in msg and "deleted" in msg and store.url(NAME) in msg
    assert not (folder / FILENAME).exists()
    hub.files[FILENAME] = good  # fixed server: the next attempt downloads it anew
    assert Path(store.path(NAME)).read_bytes() == good


def test_file_missing_on_the_hub(hub, folder):
    del hub.files[FILENAME]
    with pytest.raises(ModelFileError, match="HTTP 404") as err:
        ModelStore(folder).path(NAME)
    assert FILENAME in str(err.value) and str(folder) in str(err.value)


# ------------------------------------------------------------------------------------------------- offline

def assert_names_file_folder_url(msg: str, folder, url: str):
    assert FILENAME in msg
    assert str(folder) in msg
    assert url in msg


def test_hf_hub_offline(hub, folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFileError, match="HF_HUB_OFFLINE") as err:
        ModelStore(folder).path(NAME)
    assert_names_file_folder_url(str(err.value), folder,
                                 f"{hub.url}/LayerDiffusion/layerdiffusion-v1/resolve/main/{FILENAME}")
    assert hub.requests == []


def test_downloads_turned_off(hub, folder, monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT")
    with pytest.raises(ModelFileError, match="turned off") as err:
        ModelStore(folder, allow_download=False).load(NAME)
    assert_names_file_folder_url(
        str(err.value), folder,
        "https://huggingface.co/LayerDiffusion/layerdiffusion-v1/resolve/main/vae_transparent_decoder.safetensors")
    assert hub.requests == []


def test_connection_refused(folder):
    endpoint = os.environ["HF_ENDPOINT"]  # a 127.0.0.1 port nobody listens on
    with pytest.raises(ModelFileError, match="could not connect") as err:
        ModelStore(folder).path(NAME)
    assert_names_file_folder_url(str(err.value), folder, model_url(NAME, endpoint))
    assert not (folder / FILENAME).exists()


# --------------------------------------------------------------------------------------------------- cache

@pytest.fixture
def counted_reads(monkeypatch):
    reads = []
    real = model_store.load_state_dict

    def counting(path):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(model_store, "load_state_dict", counting)
    headers = []
    real_header = model_store.read_header
    monkeypatch.setattr(model_store, "read_header", lambda p: headers.append(p) or real_header(p))
    return reads, headers


def put(folder, name: str, seed: int, **kw) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file(tensors(seed, **kw), str(path))
    return str(path)


def test_second_load_reads_nothing_from_disk(folder, counted_reads):
    reads, headers = counted_reads
    put(folder, NAME, seed=3)
    store = ModelStore(folder)
    first = store.load(NAME)
    second = store.load(NAME)
    assert len(reads) == 1 and len(headers) == 1
    assert second is not first  # a new dict, so a caller cannot change the cache's
    assert all(second[k] is first[k] for k in first)  # but the same tensors: nothing was read again
    first.clear()
    assert set(store.load(NAME)) == set(second)


def test_file_replaced_on_disk_is_read_again(folder, counted_reads):
    reads, _ = counted_reads
    path = put(folder, NAME, seed=3)
    store = ModelStore(folder)
    assert torch.equal(store.load(NAME)["layer0.weight"], tensors(3)["layer0.weight"])
    # Same size, new content, new mtime.
    st = os.stat(path)
    save_file(tensors(4), path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert torch.equal(store.load(NAME)["layer0.weight"], tensors(4)["layer0.weight"])
    # Different size.
    put(folder, NAME, seed=5, n=2)
    assert set(store.load(NAME)) == {"layer0.weight", "layer1.weight"}
    assert len(reads) == 3
    # Replaced by a damaged file: reported, never served from the cache.
    with open(path, "r+b") as f:
        f.truncate(200)
    with pytest.raises(ModelFileError):
        store.load(NAME)


def test_cache_is_bounded_lru(folder, counted_reads):
    reads, _ = counted_reads
    names = ["layer_sd15_joint", "layer_sd15_fg2bg", "layer_sd15_bg2fg"]
    for i, name in enumerate(names):
        put(folder, name, seed=i)
    store = ModelStore(folder, cache_size=2)
    store.load(names[0])
    store.load(names[1])
    store.load(names[0])  # now most recent
    store.load(names[2])  # evicts names[1]
    assert store.cached_names() == [names[0], names[2]]
    assert len(reads) == 3
    store.load(names[1])
    assert len(reads) == 4
    nocache = ModelStore(folder, cache_size=0)
    nocache.load(names[0])
    nocache.load(names[0])
    assert nocache.cached_names() == [] and len(reads) == 6
    store.clear_cache()
    assert store.cached_names() == []


def test_cache_is_thread_safe(folder, counted_reads):
    reads, _ = counted_reads
    put(folder, NAME, seed=9)
    put(folder, "layer_xl_fg2ble", seed=10)
    store = ModelStore(folder, cache_size=2)
    results, errors = [], []
    barrier = threading.Barrier(8)

    def worker(i):
        try:
            barrier.wait()
            results.append(store.load(NAME if i % 2 else "layer_xl_fg2ble"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(reads) == 2  # each file read once, however many threads asked at the same time
    assert len({id(r["layer0.weight"]) for r in results}) == 2


def test_hub_version_in_range():
    # The store supports huggingface_hub >=0.23,<1.0 (requirements-test.txt); say which one ran.
    major, minor = model_store._hub_version()
    assert (0, 23) <= (major, minor) < (1, 0), huggingface_hub.__version__


# ---------------------------------------------------------------------------------------------------- FLUX.1

FLUX_REPO = "RedAIGC/Flux-version-LayerDiffuse"
PTH = "TransparentVAE.pth"
CONVERTED = "TransparentVAE.safetensors"
# a test-sized manifest with the sections of the shipped one (which the conversion tests use at full size)
SMALL_MANIFEST = {
    "title": "the test FLUX.1 transparent VAE", "filename": PTH,
    "flux_transparent_decoder": {"decoder.conv_in.weight": [8, 3, 3, 3],
                                 "decoder.latent_conv_in.weight": [8, 16, 1, 1]},
    "flux_transparent_encoder": {"encoder.blocks.16.weight": [16, 8, 3, 3], "encoder.blocks.16.bias": [16]},
    "flux_vae": ["sd_vae.decoder.conv_in.weight"],
}


def flux_state(seed: int = 0, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for section in ("flux_transparent_decoder", "flux_transparent_encoder"):
        state.update({k: torch.randn(s, generator=g).to(dtype) for k, s in SMALL_MANIFEST[section].items()})
    state["sd_vae.decoder.conv_in.weight"] = torch.randn(4, 16, 3, 3, generator=g).to(dtype)
    return state


def pickle_bytes(tmp_path, state) -> bytes:
    path = tmp_path / "tmp.pth"
    torch.save(state, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


@pytest.fixture
def flux_hub(tmp_path, monkeypatch):
    files = {PTH: pickle_bytes(tmp_path, flux_state(1)), "layerlora.safetensors": safetensors_bytes(tmp_path, seed=3)}
    with FakeHub(files=files, repo_id=FLUX_REPO) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        yield h


def flux_store(folder, **kw) -> ModelStore:
    return ModelStore(folder, manifests={"TransparentVAE": SMALL_MANIFEST}, **kw)


def converted_tensors(path) -> dict[str, torch.Tensor]:
    return model_store.load_state_dict(str(path))


def test_transparent_vae_pth_is_downloaded_and_converted(flux_hub, folder):
    store = flux_store(folder)
    path = store.path("TransparentVAE")
    assert path == str(folder / CONVERTED) == store.local_path("TransparentVAE")
    assert (folder / PTH).read_bytes() == flux_hub.files[PTH]  # downloaded as published, kept
    assert store.source_path("TransparentVAE") == str(folder / PTH)
    got = converted_tensors(path)
    source = flux_state(1)
    assert sorted(got) == sorted(k for k in source if not k.startswith("sd_vae."))
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], source[k]) for k in got)
    assert next(r.path for r in flux_hub.requests if r.method == "GET").startswith("/cdn/")
    assert any(r.path == f"/{FLUX_REPO}/resolve/main/{PTH}" for r in flux_hub.requests)
    # from now on only the .safetensors is read: no request, no unpickling
    n = len(flux_hub.requests)
    (folder / PTH).unlink()
    assert flux_store(folder).path("TransparentVAE") == path
    assert set(flux_store(folder).load("TransparentVAE")) == set(got)
    assert len(flux_hub.requests) == n


def test_the_pth_is_unpickled_once_with_weights_only(flux_hub, folder, monkeypatch):
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real(*a, **k))
    store = flux_store(folder)
    store.path("TransparentVAE")
    store.path("TransparentVAE.pth")  # the same entry
    assert loads == [{"map_location": "cpu", "weights_only": True}]  # converted once, safely


def test_a_pth_already_in_the_folder_is_converted_without_any_request(flux_hub, folder, tmp_path):
    folder.mkdir(parents=True)
    (folder / PTH).write_bytes(pickle_bytes(tmp_path, flux_state(5)))
    store = flux_store(folder, allow_download=False)
    assert torch.equal(converted_tensors(store.path("TransparentVAE"))["decoder.conv_in.weight"],
                       flux_state(5)["decoder.conv_in.weight"])
    assert flux_hub.requests == []


def test_layerlora_is_downloaded_from_the_flux_repo(flux_hub, folder):
    path = ModelStore(folder).path("layerlora")
    assert path == str(folder / "layerlora.safetensors")
    assert (folder / "layerlora.safetensors").read_bytes() == flux_hub.files["layerlora.safetensors"]


def test_interrupted_pth_download_resumes(flux_hub, folder):
    cut = 3 * CHUNK
    flux_hub.drop_after[PTH] = [cut]
    store = flux_store(folder, download_attempts=1)
    with pytest.raises(ModelFileError, match=f"download of {PTH} .* was interrupted"):
        store.path("TransparentVAE")
    assert not (folder / CONVERTED).exists() and not (folder / PTH).exists()
    assert store.path("TransparentVAE") == str(folder / CONVERTED)
    assert [r for r in flux_hub.requests if r.method == "GET"][-1].range == f"bytes={cut}-"


def test_flux_offline_message_names_the_pth_and_its_url(flux_hub, folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFileError, match="HF_HUB_OFFLINE") as err:
        flux_store(folder).path("TransparentVAE")
    msg = str(err.value)
    assert f"Neither {CONVERTED} nor {PTH} is in {folder}" in msg
    assert f"{flux_hub.url}/{FLUX_REPO}/resolve/main/{PTH}" in msg
    assert f"converted to {CONVERTED} on first use" in msg
    assert flux_hub.requests == []


def test_a_downloaded_pth_that_fails_the_check_is_deleted(flux_hub, folder, tmp_path):
    bad = flux_state(1)
    del bad["encoder.blocks.16.bias"]
    flux_hub.files[PTH] = pickle_bytes(tmp_path, bad)
    store = flux_store(folder)
    with pytest.raises(ModelFileError) as err:
        store.path("TransparentVAE")
    msg = str(err.value)
    assert str(folder / PTH) in msg and "missing tensors: encoder.blocks.16.bias" in msg and "deleted" in msg
    assert not (folder / PTH).exists() and not (folder / CONVERTED).exists()
    flux_hub.files[PTH] = pickle_bytes(tmp_path, flux_state(1))  # fixed: the next attempt downloads it anew
    assert store.path("TransparentVAE") == str(folder / CONVERTED)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pth_with_code_in_it_is_refused_and_kept_when_it_is_the_users(flux_hub, folder, tmp_path):
    marker = tmp_path / "ran"
    state = flux_state(1)
    state["decoder.conv_in.weight"] = _Payload(marker)
    folder.mkdir(parents=True)
    (folder / PTH).write_bytes(pickle_bytes(tmp_path, state))
    with pytest.raises(ModelFileError, match="refused and not loaded") as err:
        flux_store(folder).path("TransparentVAE")
    assert str(folder / PTH) in str(err.value) and f"{FLUX_REPO}/resolve/main/{PTH}" in str(err.value)
    assert not marker.exists()
    assert (folder / PTH).exists() and not (folder / CONVERTED).exists()  # the user's file is never deleted
    assert flux_hub.requests == []


def test_a_bad_conversion_in_the_folder_is_reported_not_replaced(flux_hub, folder, tmp_path):
    folder.mkdir(parents=True)
    (folder / PTH).write_bytes(pickle_bytes(tmp_path, flux_state(1)))
    save_file(tensors(0), str(folder / CONVERTED))  # some other safetensors under the converted name
    before = (folder / CONVERTED).read_bytes()
    with pytest.raises(ModelFileError) as err:
        flux_store(folder).load("TransparentVAE")
    msg = str(err.value)
    assert str(folder / CONVERTED) in msg and "missing tensors" in msg and f"Delete it to convert {PTH}" in msg
    assert (folder / CONVERTED).read_bytes() == before and flux_hub.requests == []


def test_default_manifest_is_the_shipped_one(folder):
    from lib_layerdiffusion.networks.pickle_conversion import load_manifest

    store = ModelStore(folder)
    assert store._manifest(MODEL_FILES["TransparentVAE"]) is load_manifest()
    assert len(load_manifest().required) == 538 + 18
