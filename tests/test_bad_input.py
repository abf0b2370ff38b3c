"""Bad input and faults against `dcl`: one clear line, a non-zero exit, nothing of the user's
removed or changed, no temporary folder left (the closing note of the reliability issue lists
every case; each is asserted here)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_one_line_error, run_dcl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from toolkit.cli import main


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes: what must not change."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def user_dir(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    return d


# -- outputs never replace what dcl did not create ------------------------------------------

def test_train_refuses_a_users_folder_and_a_file_before_training(tiny_config, user_dir, tmp_path):
    before = _tree(tmp_path)
    for out in (user_dir, user_dir / "thesis.tex"):
        t0 = time.perf_counter()
        proc = run_dcl("train", "dcccl", "--config", str(tiny_config), "--out", str(out), "--force")
        assert_one_line_error(proc, str(out))
        assert time.perf_counter() - t0 < 60  # refused up front, not after training
    assert _tree(tmp_path) == before


def test_export_refuses_its_own_run_and_a_users_folder(tiny_run, user_dir):
    run = tiny_run[0]
    before = _tree(run)
    assert_one_line_error(run_dcl("export", str(run), "--target", "host", "--out", str(run), "--force"),
                          "would replace the input")
    assert_one_line_error(run_dcl("export", str(run), "--target", "host", "--out", str(run.parent), "--force"),
                          "would replace the input")
    assert_one_line_error(run_dcl("export", str(run), "--target", "host", "--out", str(user_dir)), "did not create")
    assert _tree(run) == before and (user_dir / "thesis.tex").read_text() == "years of work"


def test_out_dot_and_unwritable_places(tiny_config, user_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toolkit", "train", "dcccl", "--config", str(tiny_config),
                           "--out", "."], cwd=user_dir, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), DCL_NO_PROGRESS="1"), timeout=300)
    assert_one_line_error(proc, "did not create")
    assert sorted(p.name for p in user_dir.iterdir()) == ["thesis.tex"]  # no hidden temporary run
    for out in ("/proc/dcl-run", str(user_dir / "thesis.tex" / "run")):
        assert_one_line_error(run_dcl("train", "dcccl", "--config", str(tiny_config), "--out", out),
                              "cannot write output")


def test_rerun_needs_force_and_replaces_only_a_dcl_run(tiny_run, tiny_config, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    assert_one_line_error(run_dcl("train", "dcccl", "--config", str(tiny_config), "--out", str(out)), "--force")


def test_sigterm_during_export_cleans_up(tiny_run, tmp_path):
    out = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "export", str(tiny_run[0]), "--target", "host",
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, DCL_NO_PROGRESS="1"))
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".bundle.tmp-*")):
        time.sleep(0.2)
    assert list(tmp_path.glob(".bundle.tmp-*")), "the export never started writing"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert [l for l in err.splitlines() if l.startswith("dcl:")] == ["dcl: terminated (SIGTERM); nothing was written"]
    assert list(tmp_path.iterdir()) == []


def test_full_disk_mid_write_is_one_line_and_leaves_nothing(tiny_run, tmp_path, monkeypatch, capsys):
    import errno

    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "checkpoint")

    out = tmp_path / "copy"
    shutil.copytree(tiny_run[0], out)
    w = tmp_path / "w.safetensors"
    f_d = load_file(str(out / "checkpoints" / "f_d.safetensors"))
    save_file({f"f_d.{k}": v for k, v in f_d.items() if "running" not in k and "num_batches" not in k}, str(w))
    before = _tree(out)
    monkeypatch.setattr(safetensors.torch, "save_file", full)  # what the checkpoint writer calls
    assert main(["-v", "import-weights", str(out), str(w)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dcl: error: No space left on device: checkpoint; nothing was written"]
    assert _tree(out) == before


# -- weights -----------------------------------------------------------------------------------

@pytest.fixture
def run_copy(tiny_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_run[0], out)
    f_d = load_file(str(out / "checkpoints" / "f_d.safetensors"))
    good = {f"f_d.{k}": v for k, v in f_d.items() if "running" not in k and "num_batches" not in k}
    return out, good


@pytest.mark.parametrize("bad, needle", [
    (lambda t: t.clone().fill_(float("nan")), "NaN or Inf"),
    (lambda t: t.clone().fill_(float("inf")), "NaN or Inf"),
    (lambda t: t.to(torch.int32), "is int32"),
    (lambda t: t.to(torch.float64), "is float64"),
    (lambda t: t.to(torch.complex64), "is complex64"),
])
def test_import_weights_refuses_bad_values(run_copy, tmp_path, bad, needle):
    out, good = run_copy
    before = _tree(out)
    weights = dict(good)
    key = next(iter(weights))
    weights[key] = bad(weights[key])
    path = tmp_path / "w.npz"
    np.savez(path, **{k: v.numpy() for k, v in weights.items()})
    assert_one_line_error(run_dcl("import-weights", str(out), str(path)), needle)
    assert _tree(out) == before


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 200])
def test_import_weights_refuses_unsafe_names(run_copy, tmp_path, name):
    out, good = run_copy
    save_file(good, str(tmp_path / "w.safetensors"))
    before = _tree(tmp_path)
    assert_one_line_error(run_dcl("import-weights", str(out), str(tmp_path / "w.safetensors"), "--name", name),
                          "is not a valid name")
    assert _tree(tmp_path) == before


def test_import_weights_never_replaces_a_checkpoint_unasked(run_copy, tmp_path):
    out, good = run_copy
    save_file(good, str(tmp_path / "w.safetensors"))
    trained = (out / "checkpoints" / "f_d.safetensors").read_bytes()
    assert_one_line_error(run_dcl("import-weights", str(out), str(tmp_path / "w.safetensors"), "--name", "f_d"),
                          "pass --force")
    assert (out / "checkpoints" / "f_d.safetensors").read_bytes() == trained
    assert run_dcl("import-weights", str(out), str(tmp_path / "w.safetensors"), "--name", "f_d", "--force").returncode == 0


def test_wrong_shape_checkpoint_names_the_tensor(run_copy):
    out, _ = run_copy
    ck = out / "checkpoints" / "g.safetensors"
    state = load_file(str(ck))
    key = sorted(k for k in state if k.endswith("weight"))[0]
    state[key] = torch.zeros(3, 3)
    save_file(state, str(ck))
    assert_one_line_error(run_dcl("eval", str(out)), key, "shape")


# -- values and late failures ------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["profile", "B", "--runs", "0"], "--runs"), (["profile", "B", "--runs", "-5"], "--runs"),
    (["profile", "B", "--threads", "0"], "--threads"), (["profile", "B", "--duration", "-1"], "--duration"),
    (["export", "R", "--target", "host", "--lr", "-1"], "--lr"), (["simulate", "R", "--runtime", "onnx", "--rounds", "0"], "--rounds"),
])
def test_numeric_options_are_range_checked(args, needle, capsys):
    assert main(["-v", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("key, value, needle", [
    ("rounds", -1, "rounds: must be >= 1"), ("device.batch_size", 0, "batch_size: must be >= 1"),
    ("cloud.epochs", -3, "epochs: must be >= 0"), ("cloud.epochs", 0, "cloud.epochs: must be >= 1"),
    ("device.lr", -0.1, "lr: must be > 0"), ("scenario.device_test_fraction", 1.5, "must be > 0 and < 1"),
])
def test_config_values_are_range_checked_before_work(tmp_path, key, value, needle, capsys):
    cfg = tmp_path / "c.json"
    table, _, leaf = key.rpartition(".")
    data: dict = {}
    (data.setdefault(table, {}) if table else data)[leaf] = value
    cfg.write_text(json.dumps({"dcccl": data}))
    assert main(["-v", "train", "dcccl", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


def test_corrupt_run_records_are_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text("[1, 2]")
    assert main(["-v", "eval", str(tmp_path)]) == 2
    (tmp_path / "f").write_text("x")
    assert main(["-v", "eval", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "names no method" in err[0] and "is a file" in err[1]


def test_html_into_a_missing_folder_fails_before_profiling(bundle, tmp_path, capsys):
    t0 = time.perf_counter()
    assert main(["-v", "profile", str(bundle[0]), "--out", str(tmp_path / "p"), "--html",
                 str(tmp_path / "nope" / "r.html")]) == 2
    assert time.perf_counter() - t0 < 10
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


# -- property: random bad values to every numeric option and config key ------------------------

NUMERIC_OPTIONS = [("profile", "--runs"), ("profile", "--threads"), ("profile", "--duration"),
                   ("profile", "--sustained"), ("export", "--lr"), ("simulate", "--devices"),
                   ("simulate", "--rounds"), ("simulate", "--epochs")]
BAD_NUMBERS = st.one_of(st.integers(max_value=0), st.floats(max_value=-1e-9, allow_nan=False),
                        st.just(float("nan")), st.sampled_from(["abc", "", "1e400x", "--"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(NUMERIC_OPTIONS), value=BAD_NUMBERS)
def test_any_bad_numeric_option_is_refused_cleanly(option, value, tmp_path_factory, capsys):
    work = tmp_path_factory.mktemp("opt")
    command, flag = option
    positional = {"profile": [str(work)], "export": [str(work), "--target", "host"],
                  "simulate": [str(work), "--runtime", "onnx"]}[command]
    if flag in ("--lr",) and isinstance(value, (int, float)) and value == value and value > 0:
        return
    code = main(["-v", command, *positional, flag, str(value)])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert list(work.iterdir()) == []


CONFIG_KEYS = ["rounds", "threads", "cloud_copy_samples", "finetune_samples", "split.ratio", "mimic.temperature",
               "cloud.lr", "cloud.batch_size", "cloud.epochs", "cloud.momentum", "cloud.weight_decay",
               "cloud.grad_clip", "device.lr", "device.batch_size", "device.epochs", "mimic.optim.lr",
               "scenario.num_devices", "scenario.classes_per_device", "scenario.cloud_val",
               "scenario.device_test_fraction", "scenario.device_val_fraction", "scenario.overlap_per_device"]
BAD_CONFIG = st.one_of(st.integers(max_value=-1), st.floats(max_value=-1e-6, allow_nan=False), st.just(float("nan")),
                       st.text(max_size=3), st.lists(st.integers(), max_size=2), st.booleans(), st.none())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(CONFIG_KEYS), value=BAD_CONFIG)
def test_any_bad_config_value_is_refused_before_work(key, value, tmp_path_factory, capsys):
    work = tmp_path_factory.mktemp("cfg")
    *tables, leaf = key.split(".")
    data: dict = {}
    node = data
    for t in tables:
        node = node.setdefault(t, {})
    node[leaf] = value
    cfg = work / "c.json"
    cfg.write_text(json.dumps({"dcccl": data}))
    code = main(["-v", "train", "dcccl", "--config", str(cfg), "--out", str(work / "run")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in work.iterdir()) == ["c.json"]
