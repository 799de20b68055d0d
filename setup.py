#!/usr/bin/env python
"""Installs nl_detectron, a Detectron2 plugin with non-local context blocks.

detectron2 itself is not listed: pip cannot resolve it (it is not on PyPI under its own name).
Install it first (see README.md) or let ``scripts/ensure_env.sh`` do it.
"""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(HERE, "nl_detectron", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def read_readme():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


def model_zoo_config_packages():
    """The repository's configs/ mapped to ``nl_detectron.model_zoo.configs`` (one package per
    folder), so that a built wheel carries them for ``nl_detectron.model_zoo``; configs/ stays the
    only copy in the source tree."""
    package_dir = {}
    for folder, subfolders, _ in os.walk(os.path.join(HERE, "configs")):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        relative = os.path.relpath(folder, HERE)
        package = "nl_detectron.model_zoo." + relative.replace(os.sep, ".")
        package_dir[package] = relative.replace(os.sep, "/")
    return package_dir


CONFIG_PACKAGES = model_zoo_config_packages()


setup(
    name="nl_detectron",
    version=read_version(),
    description="Non-local context blocks (NL, DNL, SNL, GC) for Detectron2",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tests.*", "tools", "configs"))
    + list(CONFIG_PACKAGES),
    # LazyConfig .py files travel as modules of these packages, YAML files as their data.
    package_dir=CONFIG_PACKAGES,
    package_data={package: ["*.yaml"] for package in CONFIG_PACKAGES},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.23",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.11",
        "pycocotools>=2.0.6",
        "opencv-python-headless>=4.5",
        "Pillow>=9.0",
        "tqdm>4.29.0",
    ],
    extras_require={
        "fast-eval": ["faster-coco-eval==1.8.0"],
        # onnx + onnxruntime: tools/export_model.py --format onnx and its test.
        "test": ["pytest>=7", "pytest-timeout>=2.1", "onnx>=1.15", "onnxruntime>=1.17"],
        "dev": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            "onnx>=1.15",
            "onnxruntime>=1.17",
            "ruff==0.15.12",
            "faster-coco-eval==1.8.0",
        ],
    },
)
