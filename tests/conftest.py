"""Session-wide test set-up."""

import os
from importlib import metadata

import numpy
import pytest
import torch


def _version(text):
    return tuple(int(part) for part in text.split(".")[:2])


def _triton_interpreter_works() -> bool:
    """Whether Triton's interpreter can run here: Triton <= 3.6 reads loop bounds with int() of
    a one-element array, which numpy >= 2.5 refuses (fixed in Triton 3.7)."""
    try:
        triton_version = _version(metadata.version("triton"))
    except metadata.PackageNotFoundError:
        return False
    return triton_version >= (3, 7) or _version(numpy.__version__) < (2, 5)


# Without a GPU the Triton kernels run in Triton's interpreter where it works (else their tests
# skip). It is chosen when the kernels are built, at the first import of nl_detectron.layers,
# which comes after this file.
if not torch.cuda.is_available() and _triton_interpreter_works():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def write_context_splits(tmp_path_factory):
    """A function ``specs -> {rung: (json_file, image_root)}`` that writes each
    ``nl_context`` spec as a val split under a new temporary folder."""
    from nl_detectron.data import context_source

    def write(specs):
        root = str(tmp_path_factory.mktemp("nl_context"))
        return {
            rung: context_source.ensure_written(root, rung, "val", spec=spec)
            for rung, spec in specs.items()
        }

    return write
