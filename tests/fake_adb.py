#!/usr/bin/env python3
"""A fake `adb` for tests: replays transcripts of what real devices print, keyed by the command line.

No phone or emulator can run on the test machines, so the harness's adb code path is tested
against this executable at the process boundary (DCL_ADB points at it). It only uses the
standard library and behaves like adb where the harness cares: stdout/stderr/exit code.

Environment:
  FAKE_ADB_SCENARIO  phone | phone_with_app | emulator | unauthorized | offline | no_devices |
                     disconnect_once | disconnect_always        (default: phone)
  FAKE_ADB_STATE     a folder for state between calls (disconnect counters, the call log
                     `calls.jsonl`, pushed files under `device/`); default: no state kept
Transcripts: tests/data/android/transcript_<name>.txt. A block starts with
`$ adb <args>` (shell-style glob, `*` matches anything, also newlines) followed by its output.
Directives inside a block:
  @file NAME     the contents of tests/data/android/NAME (its own @file lines expanded too)
  @exit N        exit code (default 0)
  @stderr TEXT   a line on stderr
  @push          what `adb push` prints, for the real local file (which is copied to the state dir)
  @pull NAME     copy tests/data/android/NAME to the pull destination and print adb's pull line
  @after N       the lines above answer the block's first N calls, the lines below every later one
                 (a file that appears while it is polled; needs FAKE_ADB_STATE for the count)
Lines starting with `#` before the first block are comments; `@include NAME` there appends the blocks
of transcript NAME after this transcript's own (a scenario that adds commands to another).
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "android"
SCENARIOS = {"phone": "phone_pixel8", "phone_with_app": "phone_pixel8_app", "emulator": "emulator", "unauthorized": "unauthorized", "offline": "offline",
             "no_devices": "no_devices", "disconnect_once": "phone_pixel8", "disconnect_always": "phone_pixel8"}
# What adb prints when the transport goes away mid-command (`adb shell` over a pulled cable).
DISCONNECT_STDERR = "adb: device offline"


def load_blocks(name: str) -> list[tuple[str, list[str]]]:
    blocks: list[tuple[str, list[str]]] = []
    included: list[str] = []
    for line in (DATA / f"transcript_{name}.txt").read_text().splitlines():
        if line.startswith("$ adb"):
            blocks.append((line[len("$ adb"):].strip(), []))
        elif blocks:
            blocks[-1][1].append(line)
        elif line.startswith("@include "):
            included.append(line.split(None, 1)[1].strip().removeprefix("transcript_").removesuffix(".txt"))
    for other in included:
        blocks += load_blocks(other)
    return blocks


def devices_listed(blocks: list[tuple[str, list[str]]]) -> dict[str, str]:
    """serial -> state, from the transcript's `devices -l` block (for -s SERIAL checks)."""
    for pat, body in blocks:
        if pat == "devices -l":
            out = {}
            for ln in body:
                parts = ln.split()
                if len(parts) >= 2 and not ln.startswith(("List of", "*", "@")):
                    out[parts[0]] = parts[1]
            return out
    return {}


def log_call(state: Path | None, argv: list[str]) -> None:
    if state:
        with open(state / "calls.jsonl", "a") as f:
            f.write(json.dumps(argv) + "\n")


def bump(state: Path | None, key: str) -> int:
    """Per-key call counter kept across processes."""
    if not state:
        return 1
    p = state / f"count_{key}"
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    return n


def expand(lines: list[str]) -> list[str]:
    """Replace `@file NAME` lines by that file's lines, recursively (a response can be
    assembled from the sample files)."""
    out: list[str] = []
    for ln in lines:
        if ln.startswith("@file "):
            out += expand((DATA / ln.split(None, 1)[1].strip()).read_text().rstrip("\n").split("\n"))
        else:
            out.append(ln)
    return out


def emit(body: list[str], argv: list[str], state: Path | None, key: str = "") -> int:
    rc = 0
    out: list[str] = []
    lines = expand(body)
    after = [i for i, ln in enumerate(lines) if ln.startswith("@after ")]
    if after:
        i = after[0]
        n = bump(state, "after_" + "".join(c if c.isalnum() else "_" for c in key)[:80])
        lines = lines[:i] if n <= int(lines[i].split()[1]) else lines[i + 1:]
    for ln in lines:
        if ln.startswith("@exit "):
            rc = int(ln.split()[1])
        elif ln.startswith("@stderr "):
            sys.stderr.write(ln[len("@stderr "):] + "\n")
        elif ln.strip() == "@push":
            local, remote = argv[-2], argv[-1]
            size = Path(local).stat().st_size
            if state:
                dest = state / "device" / remote.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, dest)
            out.append(f"{local}: 1 file pushed, 0 skipped. 38.2 MB/s ({size} bytes in 0.010s)")
        elif ln.startswith("@pull "):
            src, dest = DATA / ln.split(None, 1)[1].strip(), Path(argv[-1])
            shutil.copyfile(src, dest)
            out.append(f"{argv[-2]}: 1 file pulled, 0 skipped. 1.2 MB/s ({src.stat().st_size} bytes in 0.002s)")
        else:
            out.append(ln)
    text = "\n".join(out).rstrip("\n")
    if text:
        sys.stdout.write(text + "\n")
    return rc


def main(argv: list[str]) -> int:
    scenario = os.environ.get("FAKE_ADB_SCENARIO", "phone")
    state = Path(os.environ["FAKE_ADB_STATE"]) if os.environ.get("FAKE_ADB_STATE") else None
    if state:
        state.mkdir(parents=True, exist_ok=True)
    log_call(state, argv)
    if scenario not in SCENARIOS:
        sys.stderr.write(f"fake adb: unknown FAKE_ADB_SCENARIO {scenario!r}\n")
        return 2
    blocks = load_blocks(SCENARIOS[scenario])
    # -s SERIAL: answer like adb does for a serial that is missing / unauthorized / offline
    if len(argv) >= 2 and argv[0] == "-s" and argv[2:3] != ["wait-for-device"]:
        state_of = devices_listed(blocks).get(argv[1])
        if state_of is None:
            sys.stderr.write(f"adb: device '{argv[1]}' not found\n")
            return 1
        if state_of == "unauthorized":
            sys.stderr.write("adb: device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n"
                             "Try 'adb kill-server' if that seems wrong.\n"
                             "Otherwise check for a confirmation dialog on your device.\n")
            return 1
        if state_of == "offline":
            sys.stderr.write("adb: device offline\n")
            return 1
    line = " ".join(argv)
    # a cable pulled while the benchmark runs: the output stops half way, adb reports the device gone
    if scenario.startswith("disconnect") and fnmatch.fnmatchcase(line, "-s * shell sh /data/local/tmp/dcl/run_*.sh"):
        n = bump(state, "run")
        if scenario == "disconnect_always" or n == 1:
            sys.stdout.write("DCL-BATTERY-BEGIN\nCharging\nDCL-BATTERY-END\n")
            sys.stderr.write(DISCONNECT_STDERR + "\n")
            return 1
    if scenario == "disconnect_always" and fnmatch.fnmatchcase(line, "-s * shell rm -rf *"):
        sys.stderr.write(DISCONNECT_STDERR + "\n")
        return 1
    for pat, body in blocks:
        if fnmatch.fnmatchcase(line, pat):
            return emit(body, argv, state, pat)
    sys.stderr.write(f"fake adb: no transcript entry for `adb {line}` in transcript_{SCENARIOS[scenario]}.txt\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
