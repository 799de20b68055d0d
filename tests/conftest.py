"""Session-wide test set-up."""

import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter. It is chosen when the kernels are
# built, at the first import of nl_detectron.layers, which comes after this file.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
