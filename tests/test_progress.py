"""The batch runner behind the progress bars of per-neuron kernels."""

import io
import time

import pytest

from skquant import _progress
from skquant._progress import run_in_batches


@pytest.mark.parametrize("n, first", [(0, 1), (1, 4), (10, 1), (103, 4)])
def test_every_item_once_in_order(n, first):
    seen = []
    run_in_batches(lambda a, b: seen.extend(range(a, b)), n, "x", first=first)
    assert seen == list(range(n))


def test_bar_only_when_projected_long(monkeypatch):
    drawn = []

    class Recorder(_progress.progress):
        def __init__(self, *args, **kwargs):
            drawn.append(kwargs["enabled"])
            super().__init__(*args, **kwargs, stream=io.StringIO())

    monkeypatch.setattr(_progress, "progress", Recorder)
    run_in_batches(lambda a, b: None, 50, "fast")
    run_in_batches(lambda a, b: time.sleep(0.02 * (b - a)), 60, "slow", first=2)
    assert drawn == [False, True]
    # batches aim at target_seconds: the slow run used few, large batches
    sizes = []
    run_in_batches(
        lambda a, b: (sizes.append(b - a), time.sleep(0.01 * (b - a))),
        100,
        "sizes",
        first=2,
        target_seconds=0.1,
    )
    assert sizes[0] == 2 and max(sizes[1:]) >= 5 and sum(sizes) == 100
