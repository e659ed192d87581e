from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .synth import BALANCED, SKEWED, write_set


@pytest.fixture(autouse=True, scope="package")
def _fast_cpu():
    """Fixed batch size (no throughput measurement) and one thread: on a shared 2-core machine a
    second OpenMP thread makes small convolutions several times slower. Package-scoped so that it
    is in place before the module-scoped training fixtures run and is undone before tests outside
    tests/training run."""
    old = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIASSCOPE_BATCH_SIZE", "64")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def skewed_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_set(tmp_path_factory.mktemp("skewed"), SKEWED, seed=1)


@pytest.fixture(scope="session")
def balanced_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_set(tmp_path_factory.mktemp("balanced"), BALANCED, seed=2)


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 images: 10 per label x group cell."""
    return write_set(tmp_path_factory.mktemp("tiny"), {(lab, g): 10 for lab in ("green", "red") for g in "ab"},
                     seed=3)
