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

from . import (
    data,  # noqa: E402  (registers the built-in datasets)
    evaluation,  # noqa: E402
    modeling,  # noqa: E402  (registers the backbones and the keypoint head)
)
from .config import add_nonlocal_config  # noqa: E402
from .evaluation import FastCOCOEvaluator  # noqa: E402
from .layers import (  # noqa: E402
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)

__all__ = [
    "ContextBlock",
    "DisentangledNonLocalBlock",
    "FastCOCOEvaluator",
    "NonLocalBlock",
    "SpectralNonLocalBlock",
    "add_nonlocal_config",
    "data",
    "evaluation",
    "modeling",
]
