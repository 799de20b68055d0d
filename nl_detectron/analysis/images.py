"""Turning the tools' image arguments (files, folders, glob patterns) into a list of image files."""

import glob
import os
from typing import List, Sequence

__all__ = ["IMAGE_EXTENSIONS", "expand_image_paths"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_image_paths(inputs: Sequence[str]) -> List[str]:
    """
    Args:
        inputs: image files, folders (their images, not recursive) or glob patterns.

    Returns:
        list[str]: image files in argument order, each folder's and pattern's matches sorted.

    Raises:
        FileNotFoundError: naming the first argument that is no file, no folder with images and
            no pattern matching any file.
    """
    if not inputs:
        raise ValueError("no input images given; pass image files, folders or glob patterns")
    paths: List[str] = []
    for item in inputs:
        if os.path.isfile(item):
            paths.append(item)
            continue
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            what = f"folder {item!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})"
        else:
            found = sorted(p for p in glob.glob(os.path.expanduser(item)) if os.path.isfile(p))
            what = f"input image {item!r} does not exist (no such file, folder or glob match)"
        if not found:
            raise FileNotFoundError(what)
        paths.extend(found)
    return paths
