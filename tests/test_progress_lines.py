"""Progress on a file or a pipe: a few whole lines per stage, never carriage-return updates (a log
of `make demo > log` stays readable and small); a terminal keeps tqdm's bar."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = """
from toolkit.train import progress
for stage in ("cloud 1/2", "cloud 2/2"):
    bar = progress(range(1000), stage)
    for i in bar:
        if i % 20 == 0:
            bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
"""


def test_progress_on_a_pipe_is_a_line_per_quarter():
    env = {k: v for k, v in os.environ.items() if k != "DCL_NO_PROGRESS"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"{stage}: {n}/1000 ({n // 10}%) (loss {1 / ((n - 1) // 20 * 20 + 1):.4f})"
                     for stage in ("cloud 1/2", "cloud 2/2") for n in (250, 500, 750, 1000)], lines


def test_progress_on_a_terminal_is_tqdms_bar(monkeypatch):
    import tqdm

    from toolkit import train

    monkeypatch.delenv("DCL_NO_PROGRESS", raising=False)
    monkeypatch.setattr(train.sys.stderr, "isatty", lambda: True, raising=False)
    assert isinstance(train.progress(range(3), "x"), tqdm.std.tqdm)
