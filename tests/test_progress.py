"""Progress bars: live on a terminal, sparse in a log file (SLURM, CI, nohup), off with EHRFM_QUIET=1."""

import io
import itertools
import time

import pytest
import tqdm.std

import ehrfm.io
from ehrfm.io import progress


@pytest.fixture(autouse=True)
def _no_bar_state_leaks(monkeypatch):
    """A bar drawn here sets ehrfm.io._bars_shown for the whole process: every later in-process
    one-line error then started with a newline (tests/test_outputs.py failed when run after this file)."""
    monkeypatch.setattr(ehrfm.io, "_bars_shown", False)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_in_a_log_file_redraws_twice_a_minute_and_on_a_terminal_ten_times_a_second(monkeypatch):
    monkeypatch.delenv("EHRFM_QUIET", raising=False)
    # tqdm's clock is the test's: each reading 20 ms after the last, so the 1000 updates span 20 s
    # (< 30 s) however slow or loaded the machine is (on the real clock, updates spread over 30 s
    # drew a third line). The monitor thread never redraws: it acts only on a bar that drew mid-stage.
    ticks = itertools.count()
    now = time.time()
    monkeypatch.setattr(tqdm.std, "time", lambda: now + 0.02 * next(ticks))
    log, tty = io.StringIO(), _Terminal()
    for file, mininterval in ((log, 30.0), (tty, 0.1)):
        bar = progress(range(3), file=file)
        bar.close()
        assert bar.mininterval == mininterval
    log.seek(0)
    log.truncate()
    bar = progress(total=1000, file=log)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    # two draws in all (start and end), not one per update: a 1000-step stage writes two lines to a log
    assert log.getvalue().count("/1000") == 2, log.getvalue()


def test_ehrfm_quiet_turns_bars_off(monkeypatch):
    monkeypatch.setenv("EHRFM_QUIET", "1")
    log = io.StringIO()
    for _ in progress(range(5), file=log):
        pass
    assert log.getvalue() == ""
