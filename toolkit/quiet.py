"""Quiet by default: third-party noise stays out of `dcl`'s output unless `-v` is given.

The runtimes and converters dcl drives talk a lot: Python warnings (FutureWarning from torch's
pytree, UserWarnings from ExecuTorch's memory planner), library loggers (coremltools' version
notices, torch's "triton not found"), converter progress bars, and native C++ lines written
straight to file descriptor 2 (ExecuTorch's cpuinfo/threadpool messages, absl/oneDNN notices,
LiteRT's delegate line). dcl's own lines and progress bars stay.

Python-level noise is silenced where it is made (warning filters, logger levels, tqdm's
TQDM_DISABLE default, which explicit `disable=` arguments such as dcl's own bars override).
Native lines cannot be silenced at the source, so fd 2 is routed through a pipe whose reader
drops lines matching known native log formats and forwards everything else unchanged.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

from exporters.formats import FORMATS

# Loggers of libraries dcl imports besides the formats' own (each Format names its loggers);
# at ERROR only real failures show.
SHARED_LOGGERS = ("torch", "numexpr", "flwr", "ray")
THIRD_PARTY_LOGGERS = tuple(dict.fromkeys(SHARED_LOGGERS + tuple(n for f in FORMATS.values() for n in f.loggers)))

# Native lines written to fd 2 by C++ code, by their fixed prefixes: the formats' own (on their
# descriptors) and the log formats several libraries share.
SHARED_NATIVE_NOISE = (
    r"WARNING: All log messages before absl::InitializeLog\(\)",  # absl before init
    r"[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] ",  # absl/glog and torch's logging format, info/warning
)
NATIVE_NOISE = re.compile("^(" + "|".join(
    SHARED_NATIVE_NOISE + tuple(p for f in FORMATS.values() for p in f.native_noise)) + ")")
# Environment defaults read by libraries at import time (only where the user has not set them).
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TQDM_DISABLE": "1", "GLOG_minloglevel": "2", "FLWR_LOG_LEVEL": "ERROR"}


@contextmanager
def quiet_third_party(verbose: bool) -> Iterator[None]:
    """Within the block, third-party noise is dropped (unless `verbose`); restored after."""
    if verbose:
        yield
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    levels = {name: logging.getLogger(name).level for name in THIRD_PARTY_LOGGERS}
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings(), _filtered_stderr():
        warnings.simplefilter("ignore")
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Route fd 2 through a line filter that drops NATIVE_NOISE; forwards the rest as it comes."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded use): nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    reader = threading.Thread(target=_forward, args=(read_end, saved), daemon=True)
    reader.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF and drains
        reader.join(timeout=5)
        os.close(saved)


def _forward(read_end: int, out: int) -> None:
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [line for line in lines if not NATIVE_NOISE.match(line.decode("utf-8", "replace"))]
            if kept:
                os.write(out, b"\n".join(kept) + b"\n")
            # a progress bar's "\r" update goes out at once; other partial lines wait for their
            # newline (a native line may arrive in pieces, and its first piece is not yet noise)
            if b"\r" in pending and not NATIVE_NOISE.match(pending.decode("utf-8", "replace")):
                os.write(out, pending)
                pending = b""
    if pending and not NATIVE_NOISE.match(pending.decode("utf-8", "replace")):
        os.write(out, pending)
