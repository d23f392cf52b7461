"""Real photographs for tests and benchmarks, none of them committed.

- scikit-image's wheel ships `skimage/data` (astronaut, chelsea, coffee, rocket, ...);
- the piexif 1.1.3 and Pillow 13.0.0 source distributions ship camera JPEGs with EXIF, a TIFF with a
  real GPS fix, an RGBA render with transparent regions and a truncated camera JPEG. They are fetched
  once with `pip download` into PHOTO_CACHE (default ~/.cache/imageserver-photos) and reused.

Run `python -m tests.photos` to fetch them ahead of time (the Makefile's `photos` target does).
"""

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from functools import cache
from pathlib import Path

SDISTS = {"piexif": "1.1.3", "pillow": "13.0.0"}
# name -> (sdist, path inside the archive after its top folder)
SDIST_PHOTOS = {
    "canon": ("piexif", "tests/images/r_canon.jpg"),
    "olympus": ("piexif", "tests/images/r_olympus.jpg"),
    "sony": ("piexif", "tests/images/r_sony.jpg"),
    "piexif_large": ("piexif", "tests/images/large.jpg"),
    "gps_placeholder": ("piexif", "tests/images/01.jpg"),  # 8x8, GPS block with junk values
    "xmp_camera": ("pillow", "Tests/images/xmp_test.jpg"),  # 2000x1072 camera JPEG
    "flower": ("pillow", "Tests/images/flower.jpg"),
    "iptc": ("pillow", "Tests/images/iptc.jpg"),
    "sugarshack": ("pillow", "Tests/images/sugarshack.mpo"),
    "gps_tiff": ("pillow", "Tests/images/ifd_tag_type.tiff"),  # real GPS fix: 35.6 N, 111.7 W
    "dice_rgba": ("pillow", "Tests/images/transparent.png"),  # RGBA, 69% transparent
    "truncated_camera": ("pillow", "Tests/images/ultrahdr.jpg"),  # 1512x2688, cut short in the sdist
}
SKIMAGE_PHOTOS = [
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "hubble_deep_field.jpg", "retina.jpg", "camera.png", "ihc.png", "brick.png",
]
# photos that decode, the corpus for stats and benchmarks (the truncated one is kept for error tests)
CORPUS = [n.rsplit(".", 1)[0] for n in SKIMAGE_PHOTOS] + [
    n for n in SDIST_PHOTOS if n not in ("truncated_camera", "gps_placeholder")
] + ["xmp_camera_png"]


def cache_dir() -> Path:
    return Path(os.environ.get("PHOTO_CACHE", Path.home() / ".cache" / "imageserver-photos"))


def _archive(name: str) -> Path:
    folder = cache_dir() / "sdists"
    found = sorted(folder.glob(f"{name}-{SDISTS[name]}.*"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         f"{name}=={SDISTS[name]}", "-d", str(folder)],
        check=True,
    )
    return sorted(folder.glob(f"{name}-{SDISTS[name]}.*"))[0]


def _member(archive: Path, inner: str) -> bytes:
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            top = zf.namelist()[0].split("/")[0]
            return zf.read(f"{top}/{inner}")
    with tarfile.open(archive) as tf:
        top = tf.getnames()[0].split("/")[0]
        return tf.extractfile(f"{top}/{inner}").read()


@cache
def path(name: str) -> Path:
    """Local path of the named photo, fetching or deriving it on first use."""
    target_dir = cache_dir() / "photos"
    target_dir.mkdir(parents=True, exist_ok=True)
    for file in SKIMAGE_PHOTOS:
        if file.rsplit(".", 1)[0] == name:
            import skimage

            return Path(skimage.__file__).parent / "data" / file
    if name == "xmp_camera_png":  # the 2000 px camera photo as PNG, for a large lossless input
        target = target_dir / "xmp_camera.png"
        if not target.exists():
            from PIL import Image

            Image.open(path("xmp_camera")).save(target)
        return target
    sdist, inner = SDIST_PHOTOS[name]
    target = target_dir / f"{name}{Path(inner).suffix}"
    if not target.exists():
        data = _member(_archive(sdist), inner)
        target.with_suffix(".part").write_bytes(data)
        target.with_suffix(".part").rename(target)
    return target


def read(name: str) -> bytes:
    return path(name).read_bytes()


def corpus() -> dict[str, bytes]:
    return {name: read(name) for name in CORPUS}


def png_bytes(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


if __name__ == "__main__":
    for name in CORPUS + ["truncated_camera", "gps_placeholder"]:
        print(f"{path(name)}")
