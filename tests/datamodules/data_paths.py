"""Where the shared datasets are: ../shared/data beside the repository (in CI too, where the repository is cloned to a
fresh directory with shared/ next to it). A missing file fails the test with a message saying where it was looked for;
nothing is skipped silently."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"


def data_file(*parts: str) -> str:
    """The path of a shared data file, e.g. data_file("gsm8k", "test.jsonl"); fails the test if it is missing."""
    path = DATA.joinpath(*parts)
    if not path.is_file():
        pytest.fail(f"shared data file {path} is missing: the tests expect the datasets in <parent of the repository>/"
                    f"shared/data (see shared/data/README.md); the repository root is {REPO}", pytrace=False)
    return str(path)
