"""Built-in demo data: the 100 LFW faces that ship inside scikit-image, so `make demo` needs no download.

`skimage.data.lfw_subset()` holds 200 grayscale 25x25 crops in [0, 1]; the first 100 are faces and
the rest are not. They are upsampled with LANCZOS to the training resolution and replicated to RGB.

Unlike real datasets these are computed in memory on every run and never cached to disk: 100 tiny
images take milliseconds, and even at 256 px the result is under 20 MB.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

DEMO_FACES = 100
DEMO_NAME = "LFW demo faces (scikit-image lfw_subset)"


def lfw_demo_images(resolution: int) -> np.ndarray:
    """The 100 LFW demo faces as a uint8 (100, resolution, resolution, 3) array."""
    from skimage.data import lfw_subset  # imported here: skimage is slow to import and only the demo needs it

    faces = lfw_subset()[:DEMO_FACES]
    gray = np.clip(np.rint(faces * 255.0), 0, 255).astype(np.uint8)
    images = np.empty((len(gray), resolution, resolution, 3), dtype=np.uint8)
    for index, face in enumerate(gray):
        upsampled = Image.fromarray(face).resize((resolution, resolution), Image.Resampling.LANCZOS)
        images[index] = np.asarray(upsampled)[:, :, None]
    return images
