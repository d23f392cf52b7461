"""Search quality on the real photo corpus (issue point 6): each photo indexed once, then looked up with
transformed copies; recall@1 per transform, for Goldberg signatures and for MobileNetV2 embeddings.

Same content under two names counts as the same photo:
- "xmp_camera" and "xmp_camera_png" are one photo (tests/photos.py writes the PNG from the JPEG's pixels;
  signature distance 0.0, identical embeddings);
- "canon", "olympus" and "sony" are the same 80x80 solid blue (0, 0, 254) thumbnail (checked by eye and
  by pixel values), so they form one group in the embedding table.

Featureless photos: the three blue thumbnails and "gps_tiff" (a 16-bit TIFF whose 8-bit grey values span
28..32 only) have an all-zero signature, and match takes the 0/0 distance as 1.0: such an image is never
found by signature, not even by itself. They are left out of the signature table and checked to match
nothing at all.

One known signature miss: "dice_rgba", a render that is 67% pure black (its transparent area), is not
found from its JPEG copies (distance 0.34 at q95 without chroma subsampling, 0.53 with): JPEG ringing in
the black field moves image_match's 5-95% crop window (columns 28-168 become 15-176), so every grid point
shifts. That is Goldberg's, not the index's, and is listed in KNOWN_MISSES rather than hidden.
"""

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from images.decode import DecodeLimits, decode_image
from models.mobilenet import MobileNetEmbedder
from search import signature as sg
from settings import Settings
from store.base import Record
from store.sqlite import SQLiteStore
from tests import photos

SAME_CONTENT = [{"xmp_camera", "xmp_camera_png"}, {"canon", "olympus", "sony"}]
FEATURELESS = {"canon", "olympus", "sony", "gps_tiff"}
KNOWN_MISSES = {("jpeg q20", "dice_rgba"), ("jpeg q50", "dice_rgba"), ("jpeg q95", "dice_rgba")}
MODEL = MobileNetEmbedder.name


def same_photo(a: str, b: str) -> bool:
    return a == b or any(a in group and b in group for group in SAME_CONTENT)


def resize(factor):
    def apply(image):
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        return image.resize(size, Image.Resampling.LANCZOS)
    return apply


def jpeg(quality):
    def apply(image):
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(out.getvalue())).convert("RGB")
    return apply


def brightness(factor):
    return lambda image: ImageEnhance.Brightness(image).enhance(factor)


def crop(fraction):
    """Trim `fraction` of the width and height from every side."""
    def apply(image):
        dx, dy = round(image.width * fraction), round(image.height * fraction)
        return image.crop((dx, dy, image.width - dx, image.height - dy))
    return apply


T = Image.Transpose
# name -> (transform, searched with all 8 orientations, recall@1 asserted to be 1.0 for signatures)
TRANSFORMS = {
    "resize 0.25x": (resize(0.25), False, True),
    "resize 0.5x": (resize(0.5), False, True),
    "resize 2x": (resize(2.0), False, True),
    "jpeg q20": (jpeg(20), False, True),
    "jpeg q50": (jpeg(50), False, True),
    "jpeg q95": (jpeg(95), False, True),
    "rotate 90": (lambda im: im.transpose(T.ROTATE_90), True, True),
    "rotate 180": (lambda im: im.transpose(T.ROTATE_180), True, True),
    "rotate 270": (lambda im: im.transpose(T.ROTATE_270), True, True),
    "flip left-right": (lambda im: im.transpose(T.FLIP_LEFT_RIGHT), True, True),
    "flip top-bottom": (lambda im: im.transpose(T.FLIP_TOP_BOTTOM), True, True),
    "transpose": (lambda im: im.transpose(T.TRANSPOSE), True, True),
    "brightness +20%": (brightness(1.2), False, False),
    "brightness -20%": (brightness(0.8), False, False),
    "crop 2%": (crop(0.02), False, False),
    "crop 5%": (crop(0.05), False, False),
}
# embeddings: MobileNet is not rotation invariant, so only resize and JPEG are asserted
EMBEDDING_ASSERTED = {name for name in TRANSFORMS if name.startswith(("resize", "jpeg"))}


@pytest.fixture(scope="module")
def corpus():
    """name -> upright RGB image, through the project's one decoder (EXIF orientation, 16-bit TIFF)."""
    return {name: decode_image(photos.read(name), DecodeLimits()).image.convert("RGB") for name in photos.CORPUS}


@pytest.fixture(scope="module")
def queries(corpus):
    """(transform, name) -> transformed image, computed once for both tables."""
    return {(t, name): spec[0](image) for t, spec in TRANSFORMS.items() for name, image in corpus.items()}


@pytest.fixture(scope="module")
def embedder():
    model = MobileNetEmbedder(Settings())
    model.load("cpu")
    return model


def write_table(title, recalls, misses, directory) -> str:
    lines = [title, f"{'transform':18s} recall@1  misses"]
    lines += [f"{t:18s} {recalls[t]:8.3f}  {', '.join(misses[t]) or '-'}" for t in TRANSFORMS]
    table = "\n".join(lines)
    print("\n" + table)
    (directory / f"{title.split()[0]}-recall.txt").write_text(table + "\n")
    return table


def test_signature_is_image_matchs(corpus):
    """signature/words are make_record's; the 8 orientations are the signatures of the transformed images."""
    from image_match.signature_database_base import make_record

    for name in ("chelsea", "rocket", "dice_rgba"):  # 300x451, 640x427: non-square, so rotations change the grid
        image = corpus[name]
        made = make_record(name, sg._GIS, 16, 63, img=np.asarray(image))
        assert made["signature"] == sg.signature(image).tolist()
        assert [made[f"simple_word_{i}"] for i in range(63)] == sg.words(sg.signature(image)).tolist()
        pil = [None, T.ROTATE_90, T.ROTATE_180, T.ROTATE_270,
               T.FLIP_LEFT_RIGHT, T.TRANSVERSE, T.FLIP_TOP_BOTTOM, T.TRANSPOSE]  # np.rot90 turns anticlockwise
        for sig, op in zip(sg.orientations(image), pil):
            assert np.array_equal(sig, sg.signature(image if op is None else image.transpose(op)))
    zero = np.zeros(648, np.int8)
    assert sg.distance(zero, zero) == 1.0 and sg.score(sg.distance(zero, zero)) == 0.0
    assert sg.distance(made["signature"], made["signature"]) == 0.0


def test_featureless_photos(corpus):
    assert {name for name, image in corpus.items() if not sg.signature(image).any()} == FEATURELESS


def test_signature_recall(corpus, queries, tmp_path):
    store = SQLiteStore(tmp_path / "index")
    for name, image in corpus.items():
        sig = sg.signature(image)
        store.add(Record(path=name, sha256="0" * 64, signature=sig, words=sg.words(sig)))
    names = [n for n in corpus if n not in FEATURELESS]
    recalls, misses, unexpected = {}, {}, []
    for t, (_, all_orientations, asserted) in TRANSFORMS.items():
        missed = []
        for name in names:
            found = sg.search(store, queries[t, name], all_orientations=all_orientations)
            if not found or not same_photo(found[0][0].path, name):
                top = f"{found[0][0].path} {found[0][1]:.2f}" if found else "nothing under the cutoff"
                missed.append(f"{name} ({top})")
                if asserted and (t, name) not in KNOWN_MISSES:
                    unexpected.append((t, name))
        recalls[t], misses[t] = 1 - len(missed) / len(names), missed
    table = write_table(f"signature recall@1 over {len(names)} photos (cutoff {sg.CUTOFF})", recalls, misses, tmp_path)
    # resize, JPEG and the 8 orientations: every photo found first, but for the one documented miss
    assert unexpected == [], table
    store.close()


def test_no_distinct_photo_matches_another(corpus, tmp_path):
    """Every original against the whole index, all 8 orientations: only the same photo may come back.
    (The closest distinct pair at the identity orientation is rocket/retina at 0.60, well above 0.45.)"""
    store = SQLiteStore(tmp_path / "index")
    for name, image in corpus.items():
        sig = sg.signature(image)
        store.add(Record(path=name, sha256="0" * 64, signature=sig, words=sg.words(sig)))
    for name, image in corpus.items():
        found = sg.search(store, image, all_orientations=True)
        wrong = [(r.path, round(d, 3)) for r, d in found if not same_photo(r.path, name)]
        assert wrong == [], f"{name} matched other photos: {wrong}"
        if name in FEATURELESS:  # an all-zero signature is 0/0 from everything: no match at all
            assert found == []
        else:
            assert found[0][1] == 0.0 and (name, 0.0) in [(r.path, d) for r, d in found]
    store.close()


def test_embedding_recall(corpus, queries, embedder, tmp_path):
    store = SQLiteStore(tmp_path / "index")
    for name, image in corpus.items():
        sig = sg.signature(image)
        vector = embedder.forward([image])[0]
        store.add(Record(path=name, sha256="0" * 64, signature=sig, words=sg.words(sig), embeddings={MODEL: vector}))
    recalls, misses = {}, {}
    for t in TRANSFORMS:
        missed = []
        for name in corpus:
            top = store.nearest(MODEL, embedder.forward([queries[t, name]])[0], k=1)[0]
            if not same_photo(top.path, name):
                missed.append(f"{name} ({top.path} {top.similarity:.2f})")
        recalls[t], misses[t] = 1 - len(missed) / len(corpus), missed
    table = write_table(f"embedding recall@1 over {len(corpus)} photos ({MODEL})", recalls, misses, tmp_path)
    for t in EMBEDDING_ASSERTED:
        assert recalls[t] == 1.0, table
    store.close()
