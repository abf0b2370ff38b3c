"""results.json round trip (strict), console table, HTML with one <svg> per plot (checked in
headless Chromium), and the side-by-side comparison of two runs."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import pytest

from dcl_core.errors import DclError
from runtime_harness.devices.base import DeviceInfo
from runtime_harness.devices.host import host_info
from runtime_harness.metrics import LatencyStats, Measurement, drift_from_samples, latency_stats
from runtime_harness.report.compare import compare_rows, compare_table
from runtime_harness.report.console import console_table
from runtime_harness.report.html import html_report, plots
from runtime_harness.report.results import ArtifactResult, ProfileResults, load_results
from runtime_harness.report.write import write_outputs


def _samples(center: float, n: int, spread: float, seed: int) -> list[float]:
    """Deterministic, slightly skewed latencies (no RNG state shared with other tests)."""
    return [center * (1 + spread * (math.sin(i * 12.9898 + seed) ** 2) + (0.4 if i % 97 == 0 else 0.0))
            for i in range(n)]


def make_results(scale: float = 1.0, device: DeviceInfo | None = None) -> ProfileResults:
    onnx = _samples(0.00051 * scale, 400, 0.15, 1)
    tfl = _samples(0.0021 * scale, 300, 0.25, 2)
    train = _samples(0.021 * scale, 60, 0.1, 3)
    est = lambda cpu: Measurement(cpu * 15.0, "J", "estimated:model",  # noqa: E731
                                  note=f"energy per inference = CPU time per inference ({cpu:.4g} s) x cpu_power_w 15 W")
    r = ProfileResults(device=device or host_info(), target="host", bundle="bundles/mobilecnn_xs",
                       tool_versions={"dcl": "0.1.0", "onnxruntime-training": "1.19.2", "ai-edge-litert": "2.3.0"})
    r.artifacts = [
        ArtifactResult(name="mobilecnn_xs_inference", format="onnx", kind="inference", sha256="a" * 64, bytes=412_936,
                       runtime="onnxruntime (python)", latency=latency_stats(onnx), load_s=0.041, first_s=0.0031,
                       warmup=latency_stats(onnx[:3]), samples_s=onnx,
                       peak_rss=Measurement(9.5 * 2**20, "bytes", "measured:ru_maxrss", note="fresh process"),
                       file_size=Measurement(412_936.0, "bytes", "measured:file-size"), energy=est(0.00049 * scale)),
        ArtifactResult(name="mobilecnn_xs_inference", format="tflite", kind="inference", sha256="b" * 64,
                       bytes=398_112, runtime="ai-edge-litert (python)", latency=latency_stats(tfl), load_s=0.012,
                       first_s=0.004, samples_s=tfl,
                       peak_rss=Measurement(6.25 * 2**20, "bytes", "measured:ru_maxrss"),
                       file_size=Measurement(398_112.0, "bytes", "measured:file-size"), energy=est(0.002 * scale)),
        ArtifactResult(name="mobilecnn_xs_training", format="executorch", kind="training", sha256="c" * 64,
                       bytes=1_812_004, runtime="executorch (python)", latency=latency_stats(train), load_s=0.3,
                       first_s=0.05, batch_size=8, per_sample_s=latency_stats(train).mean_s / 8, samples_s=train,
                       peak_rss=Measurement.unavailable("bytes", "the fresh process loading the artifact failed: OOM"),
                       file_size=Measurement(1_812_004.0, "bytes", "measured:file-size"),
                       energy=Measurement(0.031 * scale, "J", "measured:battery", flags=["charging"], note="x"),
                       drift=drift_from_samples([i * 0.5 for i in range(60)], train, 5.0)),
        ArtifactResult(name="mobilecnn_xs_inference", format="coreml", kind="inference", sha256="d" * 64,
                       bytes=500_000, error="Core ML runs on macOS only"),
        ArtifactResult(name="on_device_tool", format="tflite", kind="inference", sha256="e" * 64, bytes=398_112,
                       runtime="benchmark_model",
                       latency=LatencyStats(n=383, mean_s=0.00261 * scale, std_s=4.1e-5, min_s=0.00255, max_s=0.00291,
                                            source="measured:tool", note="summary printed by benchmark_model"),
                       peak_rss=Measurement(38912 * 1024.0, "bytes", "measured:vmhwm"),
                       energy=Measurement.unavailable("J", "emulator battery is simulated")),
    ]
    return r


# ---------------------------------------------------------------------------------------------
# results.json

def test_results_json_round_trip(tmp_path):
    r = make_results()
    r.mark_partial("device 37211FDJH000BC disconnected during `adb shell sh ...`")
    p = r.write(tmp_path / "results.json")
    raw = json.loads(p.read_text())
    assert list(raw)[:6] == ["format_version", "created", "partial", "partial_reason", "target", "bundle"]
    assert raw["device"]["kind"] == "host" and raw["partial"] is True
    a = raw["artifacts"][0]
    for key in ("name", "format", "kind", "sha256", "bytes", "threads", "latency", "peak_rss", "energy"):
        assert key in a
    assert a["energy"]["source"] == "estimated:model" and a["latency"]["p99_s"] is not None
    back = load_results(p)
    assert back == r  # every field, every float
    assert back.artifacts[2].energy.flags == ["charging"] and back.artifacts[2].drift.windows


def test_every_energy_in_results_json_carries_a_source(tmp_path):
    raw = make_results().to_json()
    for a in raw["artifacts"]:
        assert a["energy"]["source"] and (a["energy"]["value"] is not None or a["energy"]["reason"])


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["artifacts"][0]["energy"].update(source=""), "measurement source"),
    (lambda d: d["artifacts"][0]["energy"].update(source="unavailable"), "unavailable"),
    (lambda d: d["artifacts"][0].update(colour="red"), "colour"),
    (lambda d: d.update(format_version=99), "format_version 99"),
])
def test_results_json_is_read_strictly(tmp_path, edit, needle):
    d = make_results().to_json()
    edit(d)
    p = tmp_path / "results.json"
    p.write_text(json.dumps(d))
    with pytest.raises(DclError) as e:
        load_results(p)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and "re-run `dcl profile`" in msg


def test_missing_or_garbled_results_file(tmp_path):
    with pytest.raises(DclError, match="does not exist"):
        load_results(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DclError, match="not a readable dcl results.json"):
        load_results(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------------
# console and comparison

def test_console_table():
    r = make_results()
    r.mark_partial("stopped early")
    t = console_table(r)
    assert "PARTIAL RESULTS: stopped early" in t and "(host," in t
    for needle in ("mobilecnn_xs_training", "estimated:model", "measured:battery, charging",
                   "unavailable: emulator battery is simulated", "failed [1]"):
        assert needle in t, needle
    assert t.splitlines()[-1].endswith(": Core ML runs on macOS only") and t.splitlines()[-1].startswith("[1] ")


def test_a_failed_row_keeps_the_console_tables_columns():
    lines = console_table(make_results()).splitlines()
    table = [line for line in lines if line.startswith("|")]
    failed = [line for line in table if "failed [1]" in line]
    assert len(failed) == 1
    assert {line.count("|") for line in table} == {table[0].count("|")}  # same column count on every row
    # the reason sits below the table, so a long one never widens the p50 column
    widths = {len(line) for line in table}
    assert len(widths) == 1 and "Core ML runs on macOS only" not in "".join(table)


def test_compare_shows_ratios_side_by_side():
    a = make_results()
    b = make_results(scale=2.0)
    b.artifacts = [x for x in b.artifacts if x.format != "tflite" or x.name != "on_device_tool"]
    rows = {(r["artifact"], r["format"], r["metric"]): r for r in compare_rows(a, b)}
    p50 = rows[("mobilecnn_xs_inference", "onnx", "p50 ms")]
    assert p50["ratio"] == pytest.approx(2.0) and p50["a"] == pytest.approx(a.artifacts[0].latency.p50_s * 1e3)
    assert rows[("mobilecnn_xs_training", "executorch", "ms/sample")]["ratio"] == pytest.approx(2.0)
    assert rows[("mobilecnn_xs_inference", "onnx", "energy mJ")]["ratio"] == pytest.approx(2.0)
    assert ("mobilecnn_xs_inference", "coreml", "p50 ms") not in rows  # failed on both sides
    text = compare_table(a, b)
    assert "2.00x" in text and "B/A" in text and "only in A: on_device_tool" in text

    phone = DeviceInfo("phone", "37211FDJH000BC", "Pixel 8", "Tensor G3 (zuma)", "arm64-v8a", "Android 14", "fp", False)
    c = make_results(device=phone)
    c.artifacts[0].energy = Measurement(0.0012, "J", "measured:power-rails")
    diff = compare_rows(a, c)
    e = [r for r in diff if r["metric"] == "energy mJ" and r["format"] == "onnx"][0]
    assert e["note"] == "sources differ: estimated:model vs measured:power-rails"
    assert "Pixel 8" in compare_table(a, c)


# ---------------------------------------------------------------------------------------------
# HTML

def test_html_has_an_svg_per_plot_and_nothing_external(tmp_path):
    r = make_results()
    figs = plots(r)
    # latency, memory, energy, training-step time, sustained drift
    assert len(figs) == 5
    page = html_report(r)
    assert page.count("<svg") == len(figs) == page.count("</svg>")
    titles = re.findall(r"<svg[^>]*><title>([^<]+)</title>", page)
    assert titles == ["Latency distribution per artifact", "Memory: peak RSS and artifact size",
                      "Energy per inference / training step", "Training: time per step",
                      "Sustained run: median latency (ms) per window"]
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"(src|href)=", page)  # no external resources at all
    assert "estimated:model" in page and "unavailable: emulator battery is simulated" in page
    assert "measured:battery, charging" in page
    no_training = make_results()
    no_training.artifacts = no_training.artifacts[:2]
    assert len(plots(no_training)) == 3
    j, h = write_outputs(r, tmp_path / "out")
    assert j.name == "results.json" and h.read_text() == page


def test_html_escapes_every_string_from_the_run():
    """Artifact names, errors, notes, tool versions and the partial reason come from bundles, tools and
    devices: none of them may become markup, in the tables or inside the SVG plots."""
    evil = '<img src=x onerror="alert(1)">&'
    r = make_results()
    r.mark_partial(evil)
    r.tool_versions[evil] = evil
    r.artifacts[0].name = evil
    r.artifacts[0].energy.note = evil
    r.artifacts[3].error = evil  # the failed row
    page = html_report(r)
    assert "<img" not in page and 'onerror="' not in page
    escaped = "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&amp;"
    assert page.count(escaped) >= 6  # partial, tool versions (name and version), table row, failed row, notes
    svgs = plots(r)
    assert all("<img" not in s for s in svgs)
    assert any("&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&amp;" in s for s in svgs)  # a row label in a plot
    assert page.count("<svg") == len(svgs)


def test_a_failed_row_keeps_the_html_tables_columns():
    page = html_report(make_results())
    table = page[page.index("<table>"):page.index("</table>")]
    header, *rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    width = header.count("<th>")

    def cells(row: str) -> int:
        spans = re.findall(r"<td(?: colspan=\"(\d+)\")?", row)
        return sum(int(n) if n else 1 for n in spans)

    assert len(rows) == 5 and all(cells(row) == width for row in rows)
    assert "failed: Core ML runs on macOS only" in page


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_html_report_renders_its_plots_in_headless_chromium(tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the HTML render check needs it")
    from PIL import Image

    _, html = write_outputs(make_results(), tmp_path / "report")
    png = tmp_path / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1200,2000",
           html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert png.is_file(), proc.stderr[-2000:]
    img = Image.open(png).convert("RGB")
    assert img.size == (1200, 2000)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, axes and plots, not a blank page
    present = {c for _, c in colours}
    for hexcol in ("#ff7f0e", "#2ca02c", "#1f77b4"):  # onnx, tflite and executorch marks were drawn
        rgb = tuple(int(hexcol[i:i + 2], 16) for i in (1, 3, 5))
        assert rgb in present, hexcol


def test_a_host_profile_becomes_an_artifact_result(tmp_path):
    """The pieces the `dcl profile` loop strings together on the host, end to end."""
    import numpy as np
    import torch

    from exporters.reference import PyTorchInference
    from exporters.targets import get_target
    from runtime_harness.metrics import profile_inference

    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    prof = profile_inference(lambda: PyTorchInference(model), {"x": np.ones((1, 8), np.float32)}, runs=10,
                             min_duration_s=0.01, warmup=1, target=get_target("host"), sustained_s=0.1)
    a = ArtifactResult.from_profile("linear", "pytorch", "inference", "f" * 64, 1234, prof,
                                    Measurement(1.0 * 2**20, "bytes", "measured:ru_maxrss"), runtime="torch eager")
    assert a.latency.n >= 10 and a.samples_s and a.energy.source == "estimated:model" and a.drift is not None
    assert a.file_size.value == 1234 and a.file_size.source == "measured:file-size"
    r = ProfileResults(device=host_info(), artifacts=[a], target="host")
    j, _ = write_outputs(r, tmp_path)
    assert load_results(j) == r
