from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One torch thread per process: on a 2-core machine more threads oversubscribe and crawl.
torch.set_num_threads(1)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch folder to run the CLI in (its runs/ land there)."""
    return tmp_path
