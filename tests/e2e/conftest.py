"""Fixtures of the end-to-end tests: one generated-data root per session, a train_net runner."""

import functools

import pytest
from e2e_runner import run_train_net


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory) -> str:
    """A private DETECTRON2_DATASETS: the built-in data is generated there on first use."""
    return str(tmp_path_factory.mktemp("datasets"))


@pytest.fixture(scope="session")
def train_net(datasets_root):
    """``train_net(config, out_dir, *args, opts=[...], threads=None)`` runs the tool -> Run."""
    return functools.partial(run_train_net, datasets_root)
