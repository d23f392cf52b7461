"""The synthetic-perturbed index that bench/search.py measures, built from real photos and cached.

Bases are real: Goldberg signatures (image_match) and MobileNetV2 embeddings (real ImageNet weights) of
random crops of the real photos in tests/photos.py, each crop cut at a random place and size and turned
by a random rotation or mirror image. Records reach the count by perturbing them:
- record i's signature is base i % SIG_BASES, copy i // SIG_BASES; copy 0 is the real signature, later
  copies move 15% of its values by one level (clipped to -2..2; all-zero, featureless ones stay zero);
- record i's embedding is base i % EMB_BASES, copy 0 the real vector, later copies the base mixed with
  another real base at a weight of 0..0.5 plus Gaussian noise of 10% of its norm (a random direction in
  1280 dimensions alone would make every vector about equally far from every other).
So at 1M records each real signature has about 50 perturbed near-duplicates in the index and each
real embedding about 500 neighbours: harder than a real collection for near-duplicate ranking.

Queries (none of them stored):
- "stored": a stored record's signature with 5% of its values moved again (its own record is the answer);
- "copy": base crops 0..99 re-encoded (JPEG q50, half size), half of them also rotated or mirrored
  (only the 8-orientation search can find those); their bases are in the index at every size;
- "new": 50 crops from another random stream: usually nothing in the index is within the cutoff.
Embedding queries are the "copy" and "new" images' MobileNetV2 vectors.
"""

import hashlib
import io
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from signatures import goldberg as sg

VERSION = 1
SEED = 20261122
SIG_BASES = 20_000
EMB_BASES = 2_000
COPY_QUERIES, NEW_QUERIES, STORED_QUERIES = 100, 50, 100
CHUNK = 50_000
FEATURELESS = {"canon", "olympus", "sony", "gps_tiff", "xmp_camera_png"}  # and a duplicate of xmp_camera
CACHE = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "imageserver-bench")) / "search"
WORD_POSITIONS = np.linspace(0, sg.SIGNATURE_LENGTH, sg.WORD_COUNT, endpoint=False).astype(int)


def photo_names() -> list[str]:
    from tests import photos

    return [name for name in photos.CORPUS if name not in FEATURELESS]


_PHOTOS: dict[str, Image.Image] = {}


def _photo(name: str) -> Image.Image:
    if name not in _PHOTOS:
        from tests import photos

        image = Image.open(io.BytesIO(photos.read(name)))
        image = image.convert("RGB")
        image.thumbnail((1024, 1024))  # the crops are signed at 256 px at most anyway
        _PHOTOS[name] = image
    return _PHOTOS[name]


def crop(stream: int, i: int) -> Image.Image:
    """Crop i of a random stream (0: bases, 1: new queries): same arguments, same pixels."""
    rng = np.random.default_rng([SEED, stream, i])
    names = photo_names()
    image = _photo(names[rng.integers(len(names))])
    w, h = rng.uniform(0.25, 1.0, 2)
    width, height = max(16, int(image.width * w)), max(16, int(image.height * h))
    x, y = rng.integers(0, image.width - width + 1), rng.integers(0, image.height - height + 1)
    out = image.crop((x, y, x + width, y + height))
    out.thumbnail((256, 256))
    turn = int(rng.integers(8))
    if turn:
        out = Image.fromarray(np.ascontiguousarray(sg.dihedral(np.asarray(out))[turn]))
    return out


def copy_query(i: int) -> Image.Image:
    """Base crop i re-encoded as JPEG q50 at half size; odd i also turned (rot90, rot180, mirror...)."""
    image = crop(0, i)
    image = image.resize((max(8, image.width // 2), max(8, image.height // 2)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=50)
    image = Image.open(io.BytesIO(out.getvalue())).convert("RGB")
    if i % 2:
        turn = 1 + (i // 2) % 7
        image = Image.fromarray(np.ascontiguousarray(sg.dihedral(np.asarray(image))[turn]))
    return image


def _sign_range(args) -> np.ndarray:
    stream, start, stop = args
    return np.stack([sg.signature(crop(stream, i)) for i in range(start, stop)])


def words_of(signatures: np.ndarray) -> np.ndarray:
    """image_match's 63 simple words of many signatures at once (signatures.goldberg.words, vectorised)."""
    padded = np.zeros((len(signatures), sg.SIGNATURE_LENGTH + sg.WORD_LENGTH), np.int8)
    padded[:, : sg.SIGNATURE_LENGTH] = signatures
    windows = padded[:, WORD_POSITIONS[:, None] + np.arange(sg.WORD_LENGTH)]  # (n, 63, 16)
    digits = np.sign(windows).astype(np.int64) + 1
    return digits @ (3 ** np.arange(sg.WORD_LENGTH, dtype=np.int64))


def _embed(images: list[Image.Image], batch: int = 32) -> np.ndarray:
    from models.mobilenet import MobileNetEmbedder
    from settings import Settings

    embedder = MobileNetEmbedder(Settings())
    embedder.load("cpu")
    out = []
    for start in range(0, len(images), batch):
        out.extend(embedder.forward(images[start : start + batch]))
    return np.stack(out).astype(np.float32)


def bases(log=print) -> dict[str, np.ndarray]:
    """Real signatures and embeddings of the base crops, and the query set (computed once, cached)."""
    path = CACHE / f"bases-v{VERSION}.npz"
    if path.exists():
        with np.load(path) as data:
            return dict(data)
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    step = 500
    jobs = [(0, s, min(s + step, SIG_BASES)) for s in range(0, SIG_BASES, step)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        signatures = np.concatenate(list(pool.map(_sign_range, jobs)))
    log(f"  {SIG_BASES} base signatures of real crops in {time.perf_counter() - started:.0f} s")
    queries = [copy_query(i) for i in range(COPY_QUERIES)] + [crop(1, i) for i in range(NEW_QUERIES)]
    started = time.perf_counter()
    vectors = _embed([crop(0, i) for i in range(EMB_BASES)] + queries)
    log(f"  {len(vectors)} MobileNetV2 embeddings in {time.perf_counter() - started:.0f} s")
    data = {
        "signatures": signatures,
        "vectors": vectors[:EMB_BASES],
        "query_vectors": vectors[EMB_BASES:],
        "query_signatures": np.stack([sg.signature(image) for image in queries]),
        "query_orientations": np.stack([np.stack(sg.orientations(image)) for image in queries]),
    }
    np.savez(path.with_suffix(".part.npz"), **data)
    path.with_suffix(".part.npz").rename(path)
    return data


def records(count: int, base: dict[str, np.ndarray], log=print) -> dict[str, np.ndarray]:
    """Signatures (int8), words (int64) and unit embeddings (float32) of records 0..count-1, as memory-mapped
    .npy files (a larger cached set serves a smaller count: record i never depends on the count)."""
    for folder in sorted(CACHE.glob(f"records-v{VERSION}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])):
        if int(folder.name.rsplit("-", 1)[1]) >= count and (folder / "done").exists():
            names = ("signatures", "words", "vectors")
            return {name: np.load(folder / f"{name}.npy", mmap_mode="r")[:count] for name in names}
    folder = CACHE / f"records-v{VERSION}-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sigs, vecs = base["signatures"], base["vectors"] / np.linalg.norm(base["vectors"], axis=1, keepdims=True)
    open_npy = np.lib.format.open_memmap
    out = {
        "signatures": open_npy(folder / "signatures.npy", "w+", np.int8, (count, sg.SIGNATURE_LENGTH)),
        "words": open_npy(folder / "words.npy", "w+", np.int64, (count, sg.WORD_COUNT)),
        "vectors": open_npy(folder / "vectors.npy", "w+", np.float32, (count, vecs.shape[1])),
    }
    for start in range(0, count, CHUNK):
        ids = np.arange(start, min(start + CHUNK, count))
        rng = np.random.default_rng([SEED, 2, start])
        s = sigs[ids % len(sigs)].astype(np.int16)
        moved = (rng.random(s.shape) < 0.15) & (ids >= len(sigs))[:, None] & s.any(axis=1)[:, None]
        s = np.clip(s + moved * rng.choice(np.array([-1, 1], np.int16), s.shape), -2, 2).astype(np.int8)
        v = vecs[ids % len(vecs)].copy()
        mixed = ids >= len(vecs)
        partner = vecs[rng.integers(len(vecs), size=len(ids))]
        weight = rng.uniform(0, 0.5, (len(ids), 1)).astype(np.float32)
        noise = rng.standard_normal(v.shape, dtype=np.float32) * np.float32(0.1 / np.sqrt(v.shape[1]))
        v[mixed] += (weight * partner + noise)[mixed]
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out["signatures"][ids] = s
        out["words"][ids] = words_of(s)
        out["vectors"][ids] = v
    for array in out.values():
        array.flush()
    (folder / "done").write_text("")
    log(f"  {count} records generated in {time.perf_counter() - started:.0f} s")
    return records(count, base, log)


def stored_queries(count: int, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(record indices, their signatures with 5% of values moved once more) for the "stored" queries."""
    rng = np.random.default_rng([SEED, 3, count])
    picked = np.sort(rng.choice(count, size=min(STORED_QUERIES, count), replace=False))
    s = np.asarray(signatures[picked]).astype(np.int16)
    moved = (rng.random(s.shape) < 0.05) & s.any(axis=1)[:, None]
    s = np.clip(s + moved * rng.choice(np.array([-1, 1], np.int16), s.shape), -2, 2).astype(np.int8)
    return picked, s


def sha256_of(i: int) -> str:
    return hashlib.sha256(f"bench-search/{i}".encode()).hexdigest()
