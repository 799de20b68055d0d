"""nl_detectron: non-local context blocks (NL, DNL, SNL, GC) for Detectron2.

Importing the package registers its backbones, heads and built-in datasets with detectron2.
"""

__version__ = "0.1.0"

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by tests with the module hidden
    raise ImportError(
        "nl_detectron needs detectron2, which was not found. detectron2 is not on PyPI under its "
        "own name: build it from source (pip install --no-build-isolation "
        "'git+https://github.com/facebookresearch/detectron2.git'), or run "
        "`bash scripts/ensure_env.sh` in the nl_detectron checkout, which installs a working one "
        "into .venv/ (see README.md, 'Installation')."
    ) from e
