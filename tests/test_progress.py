"""The batch runner behind the progress bars of per-neuron kernels, and the global
switch that silences every bar."""

import io
import os
import subprocess
import sys
import threading
import time

import pytest

import skquant
from skquant._common import _progress
from skquant._common._progress import progress, run_in_batches


class FakeClock:
    """A stand-in for the ``time`` module: time moves only when work is done."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(_progress, "time", fake)
    return fake


def _work(clock, per_item, first_cost=0.0, calls=None):
    """``run(a, b)`` that costs ``per_item`` seconds an item, plus ``first_cost``
    once (a JIT compilation)."""
    state = {"first": True}

    def run(a, b):
        if calls is not None:
            calls.append((a, b))
        clock.now += per_item * (b - a)
        if state["first"]:
            clock.now += first_cost
            state["first"] = False

    return run


@pytest.mark.parametrize("n, first", [(0, 1), (1, 4), (10, 1), (103, 4)])
def test_every_item_once_in_order(n, first):
    seen = []
    run_in_batches(lambda a, b: seen.extend(range(a, b)), n, "x", first=first)
    assert seen == list(range(n))


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("per_item, first_cost", [(0.5, 0.0), (0.5, 20.0), (1e-3, 0)])
def test_every_item_once_in_order_with_any_timing(clock, per_item, first_cost, enabled):
    calls = []
    with skquant.config_context(progress=enabled):
        run_in_batches(_work(clock, per_item, first_cost, calls), 64, "x", first=2)
    seen = [i for a, b in calls for i in range(a, b)]
    assert seen == list(range(64))


def test_long_work_draws_a_bar(clock, capsys):
    # 64 items of 0.5 s: 31.5 s projected after the first
    calls = []
    run_in_batches(_work(clock, 0.5, calls=calls), 64, "slow walk")
    err = capsys.readouterr().err
    assert "slow walk [" in err and err.count("\n") == 1
    assert calls[:2] == [(0, 1), (1, 2)]  # timed, then checked warm
    assert len(calls) > 10  # small batches, so the bar moves


def test_short_work_draws_nothing_even_after_a_slow_first_batch(clock, capsys):
    """The 0.2 s null-space walk: the first call compiles (or loads numba's cache),
    which projected the rest at 63 x that and drew a bar; a warm second batch
    shows the rest is short, and it runs in one call."""
    calls = []
    run_in_batches(_work(clock, 3e-3, first_cost=0.5, calls=calls), 64, "walk")
    assert capsys.readouterr().err == ""
    assert calls == [(0, 1), (1, 2), (2, 64)]
    # short from the first batch: no second timing, the rest in one call
    calls.clear()
    run_in_batches(_work(clock, 3e-3, calls=calls), 64, "walk", first=4)
    assert capsys.readouterr().err == ""
    assert calls == [(0, 4), (4, 64)]


def test_bar_from_two_seconds(clock, capsys):
    # 1.9 s projected: no bar; 2.1 s: a bar
    run_in_batches(_work(clock, 1.9 / 99), 100, "under")
    run_in_batches(_work(clock, 2.1 / 99), 100, "over")
    err = capsys.readouterr().err
    assert "under" not in err and "over [" in err


def test_batches_aim_at_target_seconds(clock):
    sizes = []
    run_in_batches(
        lambda a, b: (sizes.append(b - a), _work(clock, 0.01)(a, b)),
        1000,
        "sizes",
        first=2,
        target_seconds=0.1,
    )
    assert sizes[:2] == [2, 2] and set(sizes[2:-1]) == {10} and sum(sizes) == 1000


def test_disabled_draws_nothing_and_runs_in_one_call(clock, capsys):
    calls = []
    with skquant.config_context(progress=False):
        run_in_batches(_work(clock, 0.5, calls=calls), 64, "silent")
    assert capsys.readouterr().err == ""
    assert calls == [(0, 64)]


def test_real_slow_function_with_and_without_the_switch(capfd):
    def slow(a, b):
        time.sleep(0.01 * (b - a))

    with skquant.config_context(progress=False):
        run_in_batches(slow, 30, "real", announce_after=0.1)
    assert capfd.readouterr().err == ""
    with skquant.config_context(progress=True):
        run_in_batches(slow, 30, "real", announce_after=0.1)
    assert "real [" in capfd.readouterr().err


def test_switch_silences_verbose_loops(capsys):
    with skquant.config_context(progress=False):
        assert list(progress(range(3), desc="loop")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    with skquant.config_context(progress=True):
        assert list(progress(range(3), desc="loop")) == [0, 1, 2]
        assert list(progress(range(3), desc="off", enabled=False)) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "loop [" in err and "off" not in err


def test_progress_on_a_terminal_redraws_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    with skquant.config_context(progress=True):
        for _ in progress(range(2), desc="tty", stream=stream):
            pass
    assert stream.getvalue().count("\r") == 4 and stream.getvalue().endswith("\n")


def test_config_api():
    before = skquant.get_config()
    assert set(before) == {"progress"}
    with skquant.config_context(progress=not before["progress"]):
        assert skquant.get_config()["progress"] is not before["progress"]
        with skquant.config_context():  # None keeps the current value
            assert skquant.get_config()["progress"] is not before["progress"]
        with skquant.config_context(progress=before["progress"]):
            assert skquant.get_config() == before
    assert skquant.get_config() == before
    with pytest.raises(RuntimeError), skquant.config_context(progress=False):
        raise RuntimeError
    assert skquant.get_config() == before
    # a copy: changing it changes nothing
    skquant.get_config()["progress"] = "x"
    assert skquant.get_config() == before
    try:
        skquant.set_config(progress=False)
        assert skquant.get_config()["progress"] is False
        skquant.set_config()  # None leaves it
        assert skquant.get_config()["progress"] is False
        with skquant.config_context(progress=True):
            assert skquant.get_config()["progress"] is True
    finally:
        skquant.set_config(progress=before["progress"])
    assert skquant.get_config() == before


@pytest.mark.parametrize("bad", ["no", 0, 1, 2.5])
def test_config_rejects_non_bools(bad):
    with pytest.raises(TypeError, match=r"set_config: progress must be .* instead"):
        skquant.set_config(progress=bad)
    with pytest.raises(TypeError, match=r"config_context: progress must be"):
        with skquant.config_context(progress=bad):
            pass  # pragma: no cover


def test_context_is_per_thread():
    before = skquant.get_config()["progress"]
    seen = []
    inside = threading.Event()
    done = threading.Event()

    def other():
        inside.wait()
        seen.append(skquant.get_config()["progress"])
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with skquant.config_context(progress=not before):
        inside.set()
        done.wait()
    t.join()
    assert seen == [before]


@pytest.mark.parametrize("value, expected", [("0", False), ("off", False), ("1", True)])
def test_environment_variable_sets_the_default(value, expected):
    env = dict(os.environ, SKQUANT_PROGRESS=value)
    res = subprocess.run(
        [sys.executable, "-c", "import skquant; print(skquant.get_config())"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert res.stdout.strip() == repr({"progress": expected})
