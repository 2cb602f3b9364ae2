"""Images in and out: model range [-1, 1] <-> uint8, and sample grids as PNG."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..autograd import backend


def to_uint8(images) -> np.ndarray:
    """round((x + 1) * 127.5) clipped to 0..255 (docs/DESIGN.md §5), as a NumPy uint8 array."""
    images = backend.to_numpy(images.data if hasattr(images, "creator") else images)
    return np.clip(np.round((images.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, columns: int = 8, padding: int = 2) -> np.ndarray:
    """Tile uint8 images (N, C, H, W) into one (H', W', C) picture with a black border between tiles."""
    n, c, h, w = images.shape
    rows = (n + columns - 1) // columns
    grid = np.zeros((rows * (h + padding) + padding, columns * (w + padding) + padding, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[top:top + h, left:left + w] = images[i].transpose(1, 2, 0)
    return grid


def save_grid(images: np.ndarray, path, columns: int = 8, scale: int = 2) -> Path:
    """Save uint8 images (N, C, H, W) as one PNG grid, enlarged ``scale`` times for viewing."""
    from PIL import Image

    grid = make_grid(images, columns)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # write beside it and rename, so an interrupted save never leaves a truncated picture at ``path``
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # the suffix tells PIL the format
    try:
        picture.save(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
