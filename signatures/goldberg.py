"""Goldberg image signatures, computed by image_match itself, and the signature search over a Store.

The near-duplicate search of /add, /search and /compare, without image_match's Elasticsearch driver: a
648-value int8 signature per image (9x9 grid, 8 neighbours, 5 levels), 63 overlapping 16-value "simple
words" per signature for the first-pass lookup, then the exact normalised distance on the candidates
with a cutoff of 0.45.

Stored signatures are always image_match's own. Only the query side adds something (`query_signatures`):
images with a pure black or white border (renders on a transparent-turned-black background, product
shots on white, letterboxed frames) lose their crop window to lossy compression, so such a query is also
signed in the crop window of its clipped grey levels, which is where the clean original's window lies.
"""

import numpy as np
from image_match.goldberg import ImageSignature
from image_match.signature_database_base import get_words, max_contrast, normalized_distance, words_to_int
from PIL import Image

from images.decode import fit_within
from signatures.shape import SIGNATURE_LENGTH, WORD_COUNT, WORD_LENGTH

# image_match's SignatureDatabaseBase default, kept: /search's clients read a score of 55 as the edge
CUTOFF = 0.45  # distance_cutoff: below it two images are "the same picture"


class _Signer(ImageSignature):
    """image_match's ImageSignature, also accepting an already grey 2-D array.

    generate_signature's step 1 (rgb2gray) is pointwise, so it commutes with rotations and mirrors:
    `orientations` converts to grey once and runs image_match's steps 2-5 on the 8 transformed views,
    which gives the signatures of the transformed RGB images bit for bit at about half the cost.
    """

    @staticmethod
    def preprocess_image(image_or_path, bytestream=False, handle_mpo=False):
        if isinstance(image_or_path, np.ndarray) and image_or_path.ndim == 2:
            return image_or_path
        return ImageSignature.preprocess_image(image_or_path, bytestream=bytestream, handle_mpo=handle_mpo)


# image_match's default parameters; generate_signature only reads them, so one instance serves all threads
_GIS = _Signer()


def _sign_array(array: np.ndarray) -> np.ndarray:
    return _GIS.generate_signature(array).astype(np.int8, copy=False)


# Longest side an image is signed at. The signature averages a 9x9 grid of patches placed relative to the
# image's size, so resolution barely moves it (the 512 px astronaut and a 6000 px copy sign identically),
# while its cost grows with pixels: 3.1 s of CPU per orientation at 6000x6000, 8 of them per /search.
SIGN_SIDE = 1024


def _rgb(image: Image.Image) -> np.ndarray:
    """The pixels to sign: RGB, reduced (antialiased) to SIGN_SIDE on the longest side when larger."""
    if max(image.size) > SIGN_SIDE:
        image = image.convert("RGB").resize(fit_within(image.size, SIGN_SIDE), Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(image.convert("RGB"))


def signature(image: Image.Image) -> np.ndarray:
    """The 648 int8 signature of an (already upright) image, as match computes it."""
    return _sign_array(_rgb(image))


def orientations(image: Image.Image) -> list[np.ndarray]:
    """Signatures of the 8 dihedral transforms: identity, rot90, rot180, rot270, then each of them mirrored.

    The signature grid is not exactly symmetric (crop percentiles and grid rounding), so each transform
    is signed from its own pixels rather than by permuting the identity signature.
    """
    grey = ImageSignature.preprocess_image(_rgb(image))  # image_match's own rgb2gray
    return [_sign_array(a) for a in dihedral(grey)]


# grey levels this close to 0 or 1 count as pure black or white when a query's crop window is recomputed.
# Just above JPEG q20's ringing in dice_rgba's black field (p99 0.093 = 24/255). A sweep of 8..32/255 over
# q10-95 (4:2:0 and 4:4:4) kept its worst copy at 0.24 from 28 up (0.33-0.38 below); at 28 no variant of
# the 35 test images or of their copies comes closer than 0.52 to a distinct image (the plain signatures'
# closest distinct pair is at 0.508).
NOISE_FLOOR = 28 / 255


def query_signatures(image: Image.Image, all_orientations: bool = True) -> list[np.ndarray]:
    """What `search` looks up: the signatures of the image's views (8 orientations, as `orientations`, or
    the image alone), then, for each view whose crop window moves when near-black and near-white are
    clipped to pure black and white, that view signed once more in the clipped window.

    Why: image_match crops to the 5-95% percentiles of cumulative grey differences. A stored image with
    an exactly flat black (or white) border has zero differences there, so its window starts where the
    content starts; a JPEG copy has ringing in that border, the percentiles land inside the border and
    every grid point moves (dice_rgba: 0.52 from its own q20 copy, over the 0.45 cutoff). Clipping
    restores the flat border for the window only; the grid means still come from the query's own pixels.
    Only a query with a near-black or near-white outer row or column (a flat border's outer line)
    is checked, so ordinary photos pay a few comparisons of their edge pixels.
    """
    grey = ImageSignature.preprocess_image(_rgb(image))  # image_match's own rgb2gray
    views = dihedral(grey) if all_orientations else [grey]
    windows = [_window(v) for v in views]
    sigs = [_sign_in_window(v, w) for v, w in zip(views, windows)]
    if not _has_flat_border(grey):
        return sigs
    clipped = np.where(grey < NOISE_FLOOR, 0.0, np.where(grey > 1 - NOISE_FLOOR, 1.0, grey))
    clipped_views = dihedral(clipped) if all_orientations else [clipped]
    moved = [_window(clipped_views[0])]
    if moved[0] == windows[0]:
        # the identity's 4 limits see all 4 borders: a photo whose window clipping does not move (retina,
        # a black-edged fundus photo) skips the other 7 crop steps
        return sigs
    moved += [_window(v) for v in clipped_views[1:]]
    variants = [_sign_in_window(v, m) for v, w, m in zip(views, windows, moved) if m != w]
    return sigs + [v for v in variants if not any(np.array_equal(v, s) for s in sigs)]


def _has_flat_border(grey: np.ndarray) -> bool:
    """An outer row or column all near-black or all near-white: a flat border's line that noise left clean."""
    lines = (grey[0], grey[-1], grey[:, 0], grey[:, -1])
    return any((line < NOISE_FLOOR).all() or (line > 1 - NOISE_FLOOR).all() for line in lines)


def _window(grey: np.ndarray) -> list[tuple[int, int]]:
    """image_match's step 2a, with the signer's parameters, as plain ints for comparing."""
    limits = _GIS.crop_image(grey, lower_percentile=_GIS.lower_percentile,
                             upper_percentile=_GIS.upper_percentile, fix_ratio=_GIS.fix_ratio)
    return [(int(a), int(b)) for a, b in limits]


def _sign_in_window(grey: np.ndarray, window) -> np.ndarray:
    """image_match's generate_signature steps 2b-5 in a given window (bit for bit: tested)."""
    x, y = _GIS.compute_grid_points(grey, n=_GIS.n, window=window)
    means = _GIS.compute_mean_level(grey, x, y, P=_GIS.P)
    diffs = _GIS.compute_differentials(means, diagonal_neighbors=_GIS.diagonal_neighbors)
    _GIS.normalize_and_threshold(diffs, identical_tolerance=_GIS.identical_tolerance, n_levels=_GIS.n_levels)
    return np.ravel(diffs).astype(np.int8)


def dihedral(array: np.ndarray) -> list[np.ndarray]:
    """The 8 transforms of an image array (rows, columns first), in `orientations` order."""
    rotated = [np.rot90(array, k) for k in range(4)]
    return rotated + [np.fliplr(r) for r in rotated]


def words(sig: np.ndarray) -> np.ndarray:
    """The 63 simple words as int64, exactly as image_match's make_record derives them."""
    w = get_words(np.asarray(sig, dtype=np.int8), WORD_LENGTH, WORD_COUNT)
    max_contrast(w)  # in place: every value to -1, 0 or 1
    return words_to_int(w).astype(np.int64)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖a−b‖ / (‖a‖+‖b‖); two featureless (all-zero) signatures give 0/0: 1.0, as image_match's does."""
    return float(distances(a, np.asarray(b)[None, :])[0])


def distances(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Normalised distance from `query` to every row of `matrix` (image_match's own vectorised form)."""
    matrix = np.asarray(matrix).reshape(-1, SIGNATURE_LENGTH)
    if len(matrix) == 0:
        return np.zeros(0)
    with np.errstate(invalid="ignore"):  # 0/0 for featureless pairs is expected; nan_value handles it
        return normalized_distance(matrix, np.asarray(query), nan_value=1.0)


def score(d: float) -> float:
    """The score /search and /compare answer: 100 for identical, 55 at the cutoff."""
    return (1.0 - d) * 100.0


def search_signatures(store, signatures: list[np.ndarray], limit: int = 100) -> list[tuple]:
    """[(Record, distance)] under CUTOFF, one per path (its best distance over `signatures`), best first."""
    best: dict[str, tuple] = {}
    nearest = getattr(store, "nearest_signatures", None)
    if nearest is not None:
        # the embedded store indexes the signatures themselves (store/vectors.py): nearest by distance, which
        # also finds matches sharing no word, faster than the word lookup (bench/README.md, Search benchmark)
        for found in nearest(signatures, limit, CUTOFF):
            for record, d in found:
                if record.path not in best or d < best[record.path][1]:
                    best[record.path] = (record, d)
        return sorted(best.values(), key=lambda pair: (pair[1], pair[0].path))
    for sig in signatures:
        found = store.candidates(words(sig), limit)
        if not found:
            continue
        dists = distances(sig, np.stack([r.signature for r in found]))
        for record, d in zip(found, dists):
            d = float(d)
            if d < CUTOFF and (record.path not in best or d < best[record.path][1]):
                best[record.path] = (record, d)
    return sorted(best.values(), key=lambda pair: (pair[1], pair[0].path))


def search(store, image: Image.Image, all_orientations: bool = True, limit: int = 100) -> list[tuple]:
    """Records whose signature is within CUTOFF of `image` (or, with all_orientations, of any of its 8
    rotations and mirror images, and of their clipped-window variants: `query_signatures`), as
    [(Record, distance)] sorted by distance, best first."""
    return search_signatures(store, query_signatures(image, all_orientations), limit)
