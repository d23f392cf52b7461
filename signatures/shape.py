"""The shape of an image_match Goldberg signature and of its words: numbers only, so cheap to import.

The store checks records against these without importing image_match or scikit-image (signatures/goldberg.py,
which computes signatures, imports both).
"""

# image_match's defaults, kept: any other value changes every signature, word and score
SIGNATURE_LENGTH = 648  # ImageSignature: 9x9 grid points x 8 neighbours, int8 values -2..2
WORD_LENGTH = 16  # SignatureDatabaseBase's k
WORD_COUNT = 63  # SignatureDatabaseBase's N: overlapping "simple words" per signature
