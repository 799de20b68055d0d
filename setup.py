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


setup(
    name="nl_detectron",
    version=read_version(),
    description="Non-local context blocks (NL, DNL, SNL, GC) for Detectron2",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tests.*", "tools", "configs")),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.23,<2",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.11",
        "pycocotools>=2.0.6",
        "opencv-python-headless>=4.5",
        "Pillow>=9.0",
        "tqdm>4.29.0",
    ],
    extras_require={
        "fast-eval": ["faster-coco-eval==1.8.0"],
        "test": ["pytest>=7", "pytest-timeout>=2.1"],
        "dev": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            "ruff==0.15.12",
            "faster-coco-eval==1.8.0",
        ],
    },
)
