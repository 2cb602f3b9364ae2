"""Speckle: how often a sample's background holds a visible gray pixel (issue 17's "no speckle").

An MNIST background is black: in the MNIST test split, 8 in 100,000 of the pixels far from every
stroke are brighter than 16 of 255.  A sampled digit's background carries the noise the
reverse chain did not remove, most of it a faint floor of a few gray levels and a tail of isolated
brighter dots, which the eye reads as speckle.  The stroke pixels S are those at least ``stroke``
bright with at least one of their 8 neighbours as bright (a lone bright pixel is a dot, not a
stroke); the background B is every pixel farther than ``margin`` pixels (in both directions, a
square window) from all of S, so that the soft anti-aliased rim of a stroke never counts, and

    speckle = |{p in B : value(p) > threshold}| / |B|.

Images are uint8 (N, H, W) or (N, 1, H, W); an image with no stroke pixel has an all-background.
"""
from __future__ import annotations

import numpy as np

SPECKLE_THRESHOLD = 16  # of 255: a dot this bright shows on a black background in a grid
STROKE_LEVEL = 128      # of 255: pixels at least this bright belong to a stroke
STROKE_MARGIN = 2       # pixels around a stroke that are its rim, not background


def _window_views(mask: np.ndarray, margin: int):
    """(offset, view) for every offset (dy, dx) of a square window of half-width ``margin``: ``view`` is
    ``mask`` (N, H, W) shifted by it, False beyond the image's edge."""
    n, h, w = mask.shape
    padded = np.zeros((n, h + 2 * margin, w + 2 * margin), dtype=bool)
    padded[:, margin:margin + h, margin:margin + w] = mask
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            yield (dy, dx), padded[:, margin + dy:margin + dy + h, margin + dx:margin + dx + w]


def near_strokes(strokes: np.ndarray, margin: int) -> np.ndarray:
    """Boolean (N, H, W): pixels within ``margin`` pixels (a square window) of a True of ``strokes``."""
    return np.logical_or.reduce([view for _, view in _window_views(strokes, margin)])


def stroke_pixels(bright: np.ndarray) -> np.ndarray:
    """The pixels of ``bright`` (N, H, W) with at least one bright 8-neighbour."""
    return bright & np.logical_or.reduce([view for offset, view in _window_views(bright, 1) if offset != (0, 0)])


def background_speckle(images: np.ndarray, threshold: int = SPECKLE_THRESHOLD, stroke: int = STROKE_LEVEL,
                       margin: int = STROKE_MARGIN) -> float:
    """The share of background pixels brighter than ``threshold`` (module docstring), over all images."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"speckle needs uint8 images (0..255), got {images.dtype}; convert with data.images.to_uint8")
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"speckle needs gray images (N, H, W) or (N, 1, H, W), got shape {images.shape}")
    background = ~near_strokes(stroke_pixels(images >= stroke), margin)
    if not background.any():
        raise ValueError("speckle: no pixel is farther than the margin from a stroke, so there is no background to score")
    return float(np.count_nonzero(images[background] > threshold) / np.count_nonzero(background))
