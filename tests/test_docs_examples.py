"""The ``>>>`` examples of the docs pages run and print what the pages show."""

import doctest
import warnings
from pathlib import Path

import numpy as np
import pytest

DOCS = Path(__file__).parents[1] / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.rst") if ">>> " in p.read_text())


def test_pages_with_examples_exist():
    assert {"nullspace.rst", "user_guide.rst", "adaptive.rst"} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_page_examples(page):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testfile(
            str(DOCS / page),
            module_relative=False,
            globs={"np": np},
            optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
            verbose=False,
        )
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} example(s) of {page} failed"
