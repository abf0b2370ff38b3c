"""Metrics: statistics on known samples, the MLPerf-style timing loop, drift, and energy labels
(never an unlabelled number; estimated on the host; unavailable on an emulator; charging flagged)."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from exporters.reference import PyTorchInference, PyTorchTraining
from exporters.spec import TrainingSpec
from exporters.targets import get_target
from runtime_harness import metrics
from runtime_harness.devices.host import host_info, peak_rss_fresh_process, peak_rss_of_artifact
from runtime_harness.metrics import (
    BatterySample,
    Measurement,
    battery_energy,
    drift_from_samples,
    emulator_energy,
    estimate_energy,
    latency_stats,
    percentile,
    profile_inference,
    profile_training,
    rails_energy,
    run_sustained,
    time_runs,
)

# ---------------------------------------------------------------------------------------------
# statistics

def test_latency_stats_on_1_to_100_ms():
    s = latency_stats([i / 1000 for i in range(100, 0, -1)])  # order must not matter
    assert s.n == 100
    assert s.p50_s == pytest.approx(0.050) and s.p90_s == pytest.approx(0.090) and s.p99_s == pytest.approx(0.099)
    assert s.min_s == pytest.approx(0.001) and s.max_s == pytest.approx(0.100)
    assert s.mean_s == pytest.approx(0.0505)
    assert s.std_s == pytest.approx(statistics.pstdev([i / 1000 for i in range(1, 101)]))
    assert s.source == "measured:wall-clock"


def test_percentile_is_nearest_rank_and_always_an_observed_value():
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0], 0) == 1.0
    assert percentile([7.0], 90) == 7.0
    s = latency_stats([0.010, 0.012, 0.011, 0.050])
    assert s.p99_s == 0.050 and s.p50_s == 0.011
    with pytest.raises(ValueError):
        latency_stats([])
    with pytest.raises(ValueError):
        percentile([], 50)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 99, 100, 101, 383, 1000])
def test_percentile_is_the_kth_smallest_run_with_k_ceil_p_n(n):
    """The nearest-rank definition, rank by rank (numpy's inverted_cdf, not its default linear)."""
    runs = [(i * 7919 % n) / 1000 for i in range(n)]  # a permutation of 0..n-1 ms: values are their ranks
    for p in (0, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 100):
        k = min(max(math.ceil(p / 100 * n), 1), n)
        assert percentile(runs, p) == (k - 1) / 1000, (n, p)


class FakeClock:
    """Time advances only when the timed function runs, so the loop's decisions are exact."""

    def __init__(self, step: float):
        self.t, self.step, self.calls = 0.0, step, 0

    def now(self) -> float:
        return self.t

    def fn(self) -> None:
        self.calls += 1
        self.t += self.step


def test_time_runs_needs_both_the_run_count_and_the_minimum_duration():
    c = FakeClock(0.125)  # binary fractions: the clock sums exactly
    r = time_runs(c.fn, runs=5, min_duration_s=1.0, warmup=2, clock=c.now, cpu_clock=c.now)
    assert r.runs.n == 8  # 5 runs took 0.625 s: it keeps going to 1 s (MLPerf's min duration)
    assert c.calls == 1 + 2 + 8  # first run and warm-up are apart from the measured runs
    assert r.first_s == 0.125 and r.warmup.n == 2
    assert r.wall_s == 1.0 and r.cpu_per_run_s == 0.125

    c = FakeClock(0.5)
    r = time_runs(c.fn, runs=7, min_duration_s=1.0, warmup=0, clock=c.now, cpu_clock=c.now)
    assert r.runs.n == 7 and r.warmup is None  # the count dominates when runs are slow


def test_time_runs_stops_at_max_duration():
    c = FakeClock(1.0)
    r = time_runs(c.fn, runs=1000, min_duration_s=0, warmup=0, max_duration_s=3.0, clock=c.now, cpu_clock=c.now)
    assert r.runs.n == 3


# ---------------------------------------------------------------------------------------------
# sustained mode

def test_drift_reports_last_over_first_window_median():
    starts = [i * 0.1 for i in range(100)]  # 10 s, 1 s windows
    durs = [0.010 if t < 5 else 0.012 for t in starts]
    d = drift_from_samples(starts, durs, window_s=1.0)
    assert len(d.windows) == 10
    assert d.first_median_s == pytest.approx(0.010) and d.last_median_s == pytest.approx(0.012)
    assert d.ratio == pytest.approx(1.2) and d.throttling_suspected

    flat = drift_from_samples(starts, [0.010] * 100, window_s=1.0)
    assert flat.ratio == pytest.approx(1.0) and not flat.throttling_suspected

    one = drift_from_samples([0.0, 0.1], [0.01, 0.01], window_s=5.0)
    assert one.ratio is None and not one.throttling_suspected


def test_run_sustained_runs_for_the_requested_time():
    d = run_sustained(lambda: sum(range(2000)), duration_s=0.3, window_s=0.1)
    assert d.duration_s >= 0.3 and len(d.windows) >= 3 and d.ratio is not None


# ---------------------------------------------------------------------------------------------
# labels

def test_a_number_without_a_source_cannot_be_made():
    with pytest.raises(ValueError):
        Measurement(1.0, "J", "")
    with pytest.raises(ValueError):
        Measurement(1.0, "J", "joules")  # not measured:/estimated:/unavailable
    with pytest.raises(ValueError):
        Measurement(None, "J", "measured:battery")  # a measured value must be a value
    with pytest.raises(ValueError):
        Measurement(1.0, "J", "unavailable", reason="x")  # unavailable carries no value
    with pytest.raises(ValueError):
        Measurement(None, "J", "unavailable")  # ... and always a reason
    with pytest.raises(ValueError):
        Measurement(math.nan, "J", "measured:battery")
    m = Measurement(0.0021, "J", "measured:power-rails", flags=["charging"])
    assert m.label(1e3, "mJ") == "2.1 mJ [measured:power-rails, charging]"
    assert Measurement.unavailable("J", "why").label() == "unavailable (why)"


def test_host_energy_is_estimated_from_cpu_time_and_the_documented_power():
    host = get_target("host")
    m = estimate_energy(0.002, host)
    assert m.source == "estimated:model"
    assert m.value == pytest.approx(0.002 * host.cpu_power_w)
    assert "cpu_power_w" in m.note and f"{host.cpu_power_w:g} W" in m.note and "not a measurement" in m.note
    assert host_info().kind == "host"


def test_no_power_figure_means_unavailable_not_zero():
    class T:
        key, cpu_power_w = "mystery", 0.0

    m = estimate_energy(0.002, T())
    assert m.value is None and m.source == "unavailable" and "cpu_power_w" in m.reason


def test_emulator_energy_is_unavailable_with_its_reason():
    m = emulator_energy()
    assert m.value is None and m.source == "unavailable" and m.reason == "emulator battery is simulated"


def test_battery_energy_integrates_current_times_voltage_and_flags_charging():
    # 0.5 A at 4.0 V = 2 W for 2 s; vendors disagree on the sign of current_now
    samples = [BatterySample(100 + 0.1 * i, (-1) ** i * 500_000, 4_000_000) for i in range(21)]
    m = battery_energy(samples, latency_s=0.01, charging=False)
    assert m.source == "measured:battery" and m.value == pytest.approx(0.02) and m.flags == []
    c = battery_energy(samples, latency_s=0.01, charging=True)
    assert c.value == pytest.approx(0.02) and c.flags == ["charging"] and "external power" in c.note
    net = battery_energy(samples, latency_s=0.01, charging=False, idle_w=0.5)
    assert net.value == pytest.approx(0.015)
    few = battery_energy(samples[:1], latency_s=0.01, charging=False)
    assert few.value is None and few.source == "unavailable" and "battery sample" in few.reason


def test_rails_energy_is_average_rail_power_times_latency():
    before = {"[S2M_VDD_CPUCL2]:CPU(BIG)": 1000.0, "[VSYS_PWR_DISPLAY]:Display": 500.0}
    after = {"[S2M_VDD_CPUCL2]:CPU(BIG)": 4000.0, "[VSYS_PWR_DISPLAY]:Display": 1500.0}
    m = rails_energy(before, after, window_s=2.0, latency_s=0.01)  # 4000 mWs over 2 s = 2 W
    assert m.source == "measured:power-rails" and m.value == pytest.approx(0.02)
    assert "CPU(BIG) 75%" in m.note
    assert rails_energy({}, {}, 2.0, 0.01).source == "unavailable"
    reset = rails_energy(after, before, 2.0, 0.01)
    assert reset.source == "unavailable" and "backwards" in reset.reason


# ---------------------------------------------------------------------------------------------
# the host helpers the profile loop calls

def test_profile_inference_with_a_real_runner_labels_everything():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    p = profile_inference(lambda: PyTorchInference(model), {"x": np.ones((1, 32), np.float32)}, runs=20,
                          min_duration_s=0.05, warmup=2, target=get_target("host"))
    t = p.timing
    assert p.kind == "inference" and t.runs.n >= 20 and t.load_s is not None and t.load_s >= 0
    assert t.runs.p50_s <= t.runs.p99_s <= t.runs.max_s
    assert p.energy.source == "estimated:model" and p.energy.value > 0

    unknown = profile_inference(lambda: PyTorchInference(model), {"x": np.ones((1, 32), np.float32)}, runs=3,
                                min_duration_s=0, warmup=0)
    assert unknown.energy.source == "unavailable" and unknown.energy.reason


def test_profile_training_reports_step_and_per_sample_time():
    model = torch.nn.Sequential(torch.nn.Linear(16, 4))
    runner = PyTorchTraining(model, TrainingSpec(trainable=["0."], lr=0.1), target_name="y")
    batch = {"x": np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32),
             "y": np.zeros(8, dtype=np.int64)}
    p = profile_training(lambda: runner, batch, runs=10, min_duration_s=0.02, warmup=1, target=get_target("host"),
                         sustained_s=0.2)
    assert p.kind == "training" and p.batch_size == 8
    assert p.per_sample_s == pytest.approx(p.timing.runs.mean_s / 8)
    assert "training step" in p.energy.note
    assert p.drift is not None and p.drift.n > 0


def test_peak_rss_is_measured_in_a_fresh_process_over_an_empty_runner():
    setup = "import numpy\n"  # importing numpy peaks far above its resting RSS: the reset must hide that
    m = peak_rss_fresh_process(setup, "x = numpy.ones(64 * 2**20, dtype=numpy.uint8)\n")
    assert m.source == "measured:ru_maxrss"
    assert 60 * 2**20 <= m.value <= 80 * 2**20, m
    none = peak_rss_fresh_process(setup, "y = 1\n")
    assert none.value < 8 * 2**20, none
    bad = peak_rss_fresh_process(setup, "raise SystemExit('boom: cannot load')")
    assert bad.source == "unavailable" and "boom: cannot load" in bad.reason


def test_peak_rss_of_a_real_onnx_artifact_with_its_runner(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((256, 4096), 0.5, np.float32), "w")  # 4 MiB of weights
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "m.onnx")
    artifact = {"name": "m", "path": "m.onnx", "format": "onnx", "kind": "inference",
                "inputs": [{"name": "x", "shape": [1, 256], "dtype": "float32"}],
                "outputs": [{"name": "y", "shape": [1, 4096], "dtype": "float32"}]}
    m = peak_rss_of_artifact("onnx", tmp_path / "m.onnx", artifact)
    assert m.source == "measured:ru_maxrss", m.reason
    assert 4 * 2**20 <= m.value <= 64 * 2**20, m
    assert "onnx runner" in m.note
    missing = peak_rss_of_artifact("onnx", tmp_path / "absent.onnx", artifact)
    assert missing.source == "unavailable" and "absent.onnx" in missing.reason


def test_drift_from_back_to_back_durations():
    d = metrics.drift_from_durations([0.01] * 100 + [0.02] * 50, window_s=0.5)
    assert d.windows[0][0] == 0.0 and d.ratio == pytest.approx(2.0) and d.throttling_suspected
    assert metrics.drift_from_durations([], 1.0).ratio is None
