import os

import pytest

from spider import paths

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def reference_dir():
    root = paths.reference_dir()
    if not root.is_dir():
        pytest.skip(f"reference numbers not found at {root} (set SPIDER_REFERENCE_DIR)")
    return root


@pytest.fixture(scope="session")
def data_dir():
    root = paths.data_dir()
    if not (root / "MANIFEST.md").is_file():
        pytest.skip(f"real data not found at {root} (set SPIDER_DATA_DIR)")
    return root


@pytest.fixture(scope="session")
def compose_config():
    """``compose_config(*overrides)``: the real configs shipped in ``spider/configs`` composed by
    :func:`spider.config.compose` (what ``spider fit`` and ``fit(cfg)`` read), with ``key=value``
    overrides."""
    from spider.config import compose

    return lambda *overrides: compose(list(overrides))


@pytest.fixture
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy shared CPU the thread
    hand-offs cost far more than the maths; restore the setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
