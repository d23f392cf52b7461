"""Goldberg image signatures, computed by image_match itself, and the signature search over a Store.

What match (image_match's server) does, without its Elasticsearch driver: a 648-value int8 signature
per image (9x9 grid, 8 neighbours, 5 levels), 63 overlapping 16-value "simple words" per signature for
the first-pass lookup, then the exact normalised distance on the candidates with a cutoff of 0.45.
"""

import numpy as np
from image_match.goldberg import ImageSignature
from image_match.signature_database_base import get_words, max_contrast, normalized_distance, words_to_int
from PIL import Image

# image_match's SignatureDatabaseBase defaults, which match uses unchanged
WORD_LENGTH = 16  # k
WORD_COUNT = 63  # N
CUTOFF = 0.45  # distance_cutoff: below it two images are "the same picture"
SIGNATURE_LENGTH = 648


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


# default parameters, as match uses; generate_signature only reads them, so one instance serves all threads
_GIS = _Signer()


def _sign_array(array: np.ndarray) -> np.ndarray:
    return _GIS.generate_signature(array).astype(np.int8, copy=False)


def signature(image: Image.Image) -> np.ndarray:
    """The 648 int8 signature of an (already upright) image, as match computes it."""
    return _sign_array(np.asarray(image.convert("RGB")))


def orientations(image: Image.Image) -> list[np.ndarray]:
    """Signatures of the 8 dihedral transforms: identity, rot90, rot180, rot270, then each of them mirrored.

    The signature grid is not exactly symmetric (crop percentiles and grid rounding), so each transform
    is signed from its own pixels rather than by permuting the identity signature.
    """
    grey = ImageSignature.preprocess_image(np.asarray(image.convert("RGB")))  # image_match's own rgb2gray
    return [_sign_array(a) for a in dihedral(grey)]


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
    """‖a−b‖ / (‖a‖+‖b‖); two featureless (all-zero) signatures give 0/0: 1.0, as in match's driver."""
    return float(distances(a, np.asarray(b)[None, :])[0])


def distances(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Normalised distance from `query` to every row of `matrix` (image_match's own vectorised form)."""
    matrix = np.asarray(matrix).reshape(-1, SIGNATURE_LENGTH)
    if len(matrix) == 0:
        return np.zeros(0)
    with np.errstate(invalid="ignore"):  # 0/0 for featureless pairs is expected; nan_value handles it
        return normalized_distance(matrix, np.asarray(query), nan_value=1.0)


def score(d: float) -> float:
    """match's dist_to_percent: 100 for identical, 55 at the cutoff."""
    return (1.0 - d) * 100.0


def search_signatures(store, signatures: list[np.ndarray], limit: int = 100) -> list[tuple]:
    """[(Record, distance)] under CUTOFF, one per path (its best distance over `signatures`), best first."""
    best: dict[str, tuple] = {}
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
    rotations and mirror images), as [(Record, distance)] sorted by distance, best first."""
    sigs = orientations(image) if all_orientations else [signature(image)]
    return search_signatures(store, sigs, limit)
