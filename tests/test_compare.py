"""`dcl compare`: mean ± sample std of a method's results over several runs (seeds)."""
import json
import shutil
import statistics

import pytest
from conftest import assert_one_line_error, run_dcl


def _copy_run(src, dst, seed, shift=0.0, **config_changes):
    """A copy of a real run as if trained with another seed: union_test moved by `shift`."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["config"]["seed"] = seed
    cfg["config"].update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    metrics = json.loads((dst / "metrics.json").read_text())
    for row in metrics["results"].values():
        row["union_test"] += shift
    (dst / "metrics.json").write_text(json.dumps(metrics))
    return dst, metrics


def test_mean_and_sample_std_over_seeds(tiny_run, tmp_path):
    src, _ = tiny_run
    runs = [_copy_run(src, tmp_path / f"s{i}", seed=i, shift=d) for i, d in enumerate((0.0, 1.5, -4.0))]
    proc = run_dcl("compare", *(str(r) for r, _ in runs), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["method"] == "dcccl" and out["seeds"] == [0, 1, 2] and out["config_differences"] == []
    for name in ("cloud_only", "device_only", "dcccl_mimic", "dcccl_oracle"):
        union = [m["results"][name]["union_test"] for _, m in runs]
        got = out["results"][name]["union_test"]
        assert got["values"] == pytest.approx(union) and got["n"] == 3
        assert got["mean"] == pytest.approx(statistics.fmean(union))
        assert got["std"] == pytest.approx(statistics.stdev(union))  # n - 1, not n
        # a metric that is the same in every run has no spread
        assert out["results"][name]["cloud_test"]["std"] == 0.0

    table = run_dcl("compare", *(str(r) for r, _ in runs))
    assert table.returncode == 0 and table.stderr == ""
    mimic = runs[0][1]["results"]["dcccl_mimic"]["union_test"]
    row = next(l for l in table.stdout.splitlines() if l.startswith("| dcccl_mimic"))
    assert f"{mimic - 2.5 / 3:.2f} ± {statistics.stdev([0.0, 1.5, -4.0]):.2f}" in row


def test_configs_that_differ_beyond_the_seed_are_named(tiny_run, tmp_path):
    src, _ = tiny_run
    a, _ = _copy_run(src, tmp_path / "a", seed=0)
    b, _ = _copy_run(src, tmp_path / "b", seed=1, rounds=7)
    proc = run_dcl("compare", str(a), str(b))
    assert proc.returncode == 0, proc.stderr
    assert "differ in more than the seed: rounds" in proc.stderr


def test_bad_inputs_are_one_line(tiny_run, tmp_path):
    src, _ = tiny_run
    a, _ = _copy_run(src, tmp_path / "a", seed=0)
    assert_one_line_error(run_dcl("compare", str(a)), "at least 2 run directories")
    assert_one_line_error(run_dcl("compare", str(a), str(a)), "given twice")
    assert_one_line_error(run_dcl("compare", str(a), str(tmp_path / "nope")), "does not exist")

    other, _ = _copy_run(src, tmp_path / "other", seed=1)
    record = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(record | {"method": "iciia"}))
    assert_one_line_error(run_dcl("compare", str(a), str(other)), "different methods")

    broken, _ = _copy_run(src, tmp_path / "broken", seed=2)
    (broken / "metrics.json").write_text("{not json")
    assert_one_line_error(run_dcl("compare", str(a), str(broken)), "metrics.json is corrupt")
    (broken / "metrics.json").write_text(json.dumps({"method": "dcccl"}))
    assert_one_line_error(run_dcl("compare", str(a), str(broken)), "no \"results\" table")


def test_compare_reads_runs_without_importing_torch():
    """`dcl compare` reads JSON records only: it starts in a fraction of a second, without torch."""
    import subprocess
    import sys

    from conftest import ROOT

    code = "import sys; import toolkit.cli, toolkit.compare; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr[-2000:]
