"""Data access in one import: the dataset index (`dataset`), image decoding (`decode`) and the
decoded image cache (`image_cache`), each in its own module."""

from ranking_lib.data.dataset import IMAGE_SUFFIXES, SPLITS, TinyImageNet
from ranking_lib.data.decode import load_image_rgb
from ranking_lib.data.image_cache import ImageCache, default_cache_dir, load_or_build_cache, verify_content

__all__ = ["TinyImageNet", "SPLITS", "IMAGE_SUFFIXES", "load_image_rgb", "ImageCache", "default_cache_dir",
           "load_or_build_cache", "verify_content"]
