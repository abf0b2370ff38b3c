"""Quiet by default: `dcl`'s stderr holds its own lines only; `-v` lets third-party output through."""
from __future__ import annotations

import re

import pytest
from conftest import run_dcl

from toolkit.quiet import NATIVE_NOISE

# what dcl itself prints while exporting: the header and one line per artifact
OWN_LINE = re.compile(r"^(exporting \S+ \(\w+\) for host|  device_step \w+ +(inference|training) )")


@pytest.mark.parametrize("line", [
    "[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version",
    "[threadpool.cpp:66] Resetting threadpool to 1 threads.",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796196490.701518    8555 port.cc:153] oneDNN custom operations are on.",
    "W1202 07:27:43.151000 8555 torch/utils/flop_counter.py:29] triton not found",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
])
def test_native_noise_patterns(line):
    assert NATIVE_NOISE.match(line)


@pytest.mark.parametrize("line", ["dcl: error: something is wrong", "  device_step onnx inference 1 B",
                                  "cloud f_c 1/4:  50%|#####     | 2/4", "E1202 07:27:43.151 8555 x.cc:1] a real error"])
def test_own_lines_and_errors_are_kept(line):
    assert not NATIVE_NOISE.match(line)


def test_export_prints_only_dcls_own_lines(tiny_run, bundle, tmp_path):
    run, _ = tiny_run
    # the shared export of the tiny run for host in every format, as a user runs it
    lines = [l for l in bundle[2].splitlines() if l.strip()]
    assert lines and not [l for l in lines if not OWN_LINE.match(l)], [l for l in lines if not OWN_LINE.match(l)]
    # coremltools alone is noisy enough to show -v lets third-party output through (and is quick)
    verbose = run_dcl("-v", "export", str(run), "--target", "host", "--formats", "coreml",
                      "--out", str(tmp_path / "verbose"))
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    noisy = [l for l in verbose.stderr.splitlines() if l.strip() and not OWN_LINE.match(l)]
    assert noisy, "with -v the runtimes' own warnings and logs are shown"
