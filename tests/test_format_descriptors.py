"""Every per-format fact lives on the format's descriptor (exporters.formats.FORMATS) and every
table elsewhere derives from it: a new format that leaves a fact out fails, naming the field."""
from __future__ import annotations

import dataclasses
import re

import pytest

from exporters.formats import DEMO_APPS, FORMATS, Format, formats_of_app
from runtime_harness.devices.tools import TOOLS, RunPlan, tool_command
from runtime_harness.parsers import TOOL_PARSERS
from toolkit.apps import PLATFORMS
from toolkit.quiet import NATIVE_NOISE, THIRD_PARTY_LOGGERS

ONNX = FORMATS["onnx"]


@pytest.mark.parametrize("field,value", [
    ("display", ""), ("exporter", "no_colon"), ("loggers", ()), ("packages", ()), ("devices", ()),
    ("demo_app", "watch"), ("android_tool", None), ("inference_tolerance", 0.0),
])
def test_a_descriptor_missing_a_fact_fails_naming_the_field(field, value):
    with pytest.raises(TypeError, match=f"field '{field}'"):
        dataclasses.replace(ONNX, name="newformat", **{field: value})


def test_a_descriptor_without_a_required_field_cannot_be_made():
    kwargs = {f.name: getattr(ONNX, f.name) for f in dataclasses.fields(Format)}
    del kwargs["loggers"]
    with pytest.raises(TypeError, match="loggers"):
        Format(**kwargs)


def test_the_android_tools_derive_from_the_descriptors():
    assert TOOLS == {f.name: f.android_tool for f in FORMATS.values() if "android" in f.devices}
    for fmt, tool in TOOLS.items():
        assert tool.parser in TOOL_PARSERS, fmt
        cmd = tool_command(tool, "/data/local/tmp/dcl", "m.bin", RunPlan(runs=7, warmup=2, min_duration_s=0.5, threads=3))
        assert cmd.startswith(f"LD_LIBRARY_PATH=. ./{tool.binary} ") and "/data/local/tmp/dcl/m.bin" in cmd
        assert "{" not in cmd  # every template field filled
        assert re.search(r"\b(3)\b", cmd), cmd  # the thread count reaches the tool


def test_the_demo_apps_and_the_quiet_tables_derive_from_the_descriptors():
    assert {p.name for p in PLATFORMS} == set(DEMO_APPS)
    for p in PLATFORMS:
        assert p.formats == formats_of_app(p.name) and p.formats
        assert all(f in p.export_hint for f in p.formats)
    assert set(formats_of_app("android")) | set(formats_of_app("ios")) == set(FORMATS)
    for f in FORMATS.values():
        assert set(f.loggers) <= set(THIRD_PARTY_LOGGERS), f.name
    assert NATIVE_NOISE.match("[cpuinfo_utils.cpp:71] Reading file /sys/devices")  # ExecuTorch's own
    assert NATIVE_NOISE.match("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")  # LiteRT's own
    assert not NATIVE_NOISE.match("dcl: error: something the user must see")


def test_where_a_format_runs_is_the_descriptors_answer_for_each_kind(monkeypatch):
    import exporters.formats as formats

    monkeypatch.setattr(formats.sys, "platform", "darwin")
    assert FORMATS["coreml"].runs_here("inference") == (True, "")
    ok, why = FORMATS["coreml"].runs_here("training")
    assert not ok and "MLUpdateTask" in why
    assert FORMATS["onnx"].runs_here("training") == (True, "")
    monkeypatch.setattr(formats.sys, "platform", "linux")
    assert "runs only on macOS" in FORMATS["coreml"].runs_here("inference")[1]
