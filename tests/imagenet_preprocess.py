"""ImageNet evaluation preprocessing: resize the shorter side, then take the centre crop.

    resize_size(crop, rule='pad32') -> int        the shorter side to resize to (px)
    resize_shorter_center_crop(image uint8 [H, W, 3], resize_to, crop, resample='bicubic')
        -> float32 [crop, crop, 3] in [0, 1]

The resize is PIL's (antialiased: the filter support grows with the downscale factor), as the
PyTorch references use it (torchvision's Resize on PIL images). Geometry as torchvision:
Resize(resize_to) makes the shorter side resize_to and the longer int(resize_to * long /
short); CenterCrop(crop) starts at round((size - crop) / 2). Images whose shorter side is below
resize_to are upscaled.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
RESIZE_RULES = ("pad32", "ratio")


def resize_size(crop: int, rule: str = "pad32") -> int:
    """The shorter side (px) to resize to before a centre crop of `crop` px.

    rule: 'pad32' = crop + 32 (TF EfficientNet's evaluation, CROP_PADDING = 32: 224 -> 256,
    240 -> 272, 260 -> 292); 'ratio' = int(crop * 256 / 224) (crop fraction 0.875, as timm:
    224 -> 256, 240 -> 274, 260 -> 297).
    """
    if rule not in RESIZE_RULES:
        raise ValueError(f"rule must be one of {RESIZE_RULES}, got {rule!r}")
    return crop + 32 if rule == "pad32" else int(crop * 256 / 224)


def resize_shorter_center_crop(
    image: np.ndarray, resize_to: int, crop: int, resample: str = "bicubic"
) -> np.ndarray:
    """Resize `image` so its shorter side is `resize_to`, then cut the central crop x crop.

    image: uint8 [H, W, 3] RGB; resize_to >= crop >= 1 (px); resample: 'bicubic' | 'bilinear'.
    Returns float32 [crop, crop, 3] in [0, 1].
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"image must be uint8 [H, W, 3] RGB, got {image.dtype} of shape {image.shape}"
        )
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {tuple(RESAMPLE)}, got {resample!r}")
    if not (isinstance(crop, int) and isinstance(resize_to, int) and 1 <= crop <= resize_to):
        raise ValueError(
            f"need ints 1 <= crop <= resize_to, got crop {crop!r}, resize_to {resize_to!r}"
        )
    h, w = image.shape[:2]
    if h <= w:
        size = (int(resize_to * w / h), resize_to)  # PIL sizes are (width, height)
    else:
        size = (resize_to, int(resize_to * h / w))
    resized = Image.fromarray(image).resize(size, RESAMPLE[resample])
    left = round((size[0] - crop) / 2.0)
    top = round((size[1] - crop) / 2.0)
    out = np.asarray(resized.crop((left, top, left + crop, top + crop)), np.float32)
    return out / 255.0
