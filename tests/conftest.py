"""Shared fixtures."""
from __future__ import annotations

import copy

import pytest
import torch

SHAPES_CFG = {"seed": 3, "image_size": 32, "num_train": 120, "num_test": 300, "max_objects": 3,
              "holdout_pairs": ["red triangle", "blue circle"], "num_holdout": 60}


@pytest.fixture
def shapes_cfg() -> dict:
    """A small Shapes-T2I config (every key the generator requires); the test's own copy."""
    return copy.deepcopy(SHAPES_CFG)


@pytest.fixture(scope="session")
def shapes32(tmp_path_factory):
    """The ``shapes_cfg`` dataset (32 px), generated once per session."""
    from t2i.data.shapes import generate

    out = tmp_path_factory.mktemp("shapes32")
    generate(out, copy.deepcopy(SHAPES_CFG))
    return out


@pytest.fixture
def one_thread():
    """One intra-op thread: the tensors are tiny, and more threads only add synchronisation,
    which stalls on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
