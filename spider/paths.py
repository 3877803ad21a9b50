"""Where the read-only shared material lives (real data, weights, reference numbers).

``SPIDER_SHARED_DIR`` overrides the whole folder; ``SPIDER_DATA_DIR`` and ``SPIDER_REFERENCE_DIR``
override its parts. Defaults are ``../shared/...`` relative to the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    return Path(os.environ.get("SPIDER_SHARED_DIR", REPO_ROOT.parent / "shared"))


def data_dir() -> Path:
    """Real datasets and pre-trained weights (``MANIFEST.md`` describes the files)."""
    return Path(os.environ.get("SPIDER_DATA_DIR", shared_dir() / "data"))


def reference_dir() -> Path:
    """Published tables and outputs of the authors' implementations."""
    return Path(os.environ.get("SPIDER_REFERENCE_DIR", shared_dir() / "reference"))
