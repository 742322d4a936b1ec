"""Progress bars: live on a terminal, sparse in a log file (SLURM, CI, nohup), off with EHRFM_QUIET=1."""

import io

from ehrfm.io import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_in_a_log_file_redraws_twice_a_minute_and_on_a_terminal_ten_times_a_second(monkeypatch):
    monkeypatch.delenv("EHRFM_QUIET", raising=False)
    log, tty = io.StringIO(), _Terminal()
    assert progress(range(3), file=log).mininterval == 30.0
    assert progress(range(3), file=tty).mininterval == 0.1
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
