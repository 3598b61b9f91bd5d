"""Training data: image folders/zips (CelebA-HQ) through a one-time uint8 cache, or the built-in LFW demo."""
from .cache import build_cache, center_crop_resize, load_cache
from .datamodule import ImageArrayDataset, ImageDataModule
from .demo import lfw_demo_images
from .sources import IMAGE_EXTENSIONS, ImageSource, fingerprint, list_images, open_rgb, to_rgb

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageArrayDataset",
    "ImageDataModule",
    "ImageSource",
    "build_cache",
    "center_crop_resize",
    "fingerprint",
    "lfw_demo_images",
    "list_images",
    "load_cache",
    "open_rgb",
    "to_rgb",
]
