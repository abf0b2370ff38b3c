"""bench/iciia_overhead.py end to end at its smallest: the pre-trained EfficientNet-Lite0 at 224 with
ICIIA-T, params and FLOPs, and PyTorch eager latency (no export); the slow case adds one runtime
through the gate."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("efficientnet_lite_pytorch")
if importlib.util.find_spec("foolbox") is None:
    pytest.skip("foolbox's sample images are not installed", allow_module_level=True)


def _run(monkeypatch, tmp_path, *args: str) -> dict:
    spec = importlib.util.spec_from_file_location("iciia_overhead", ROOT / "bench" / "iciia_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "o.json"
    monkeypatch.setattr(sys, "argv", ["iciia_overhead.py", "--rounds", "1", "--runs", "1", "--seconds", "0",
                                      "--out", str(out), *args])
    bench.main()
    return json.loads(out.read_text())


def test_cost_and_eager_latency(monkeypatch, tmp_path):
    r = _run(monkeypatch, tmp_path, "--formats", "", "--p", "64,256")
    assert r["feature_dim"] == 1280 and r["tokens"] == 16 and r["classes"] == 1000
    for p, c in r["cost"].items():
        # the head replaces the backbone's classifier: the added params are the encoder layers'
        assert c["added_params"] == c["attention_params"]
        # FlopCounterMode counts the matmuls of the paper's formula exactly (2 FLOPs per multiply-add)
        assert c["added_flops"] == c["formula_flops"], p
        assert 0 < c["flops_pct"] < 2
    assert {(x["runtime"], x["P"]) for x in r["latency"]} == {("pytorch eager", 64), ("pytorch eager", 256)}
    assert all(x["backbone_p50_ms"] > 0 and x["iciia_p50_ms"] > 0 for x in r["latency"])
    assert r["failures"] == []


@pytest.mark.slow
def test_one_runtime_through_the_gate(monkeypatch, tmp_path):
    r = _run(monkeypatch, tmp_path, "--formats", "onnx", "--p", "256", "--strict")
    assert r["failures"] == []
    assert r["gate"]["onnx"] == {"backbone": "passed", "classifier_p256": "passed", "iciia_alone_p256": "passed"}
    assert {x["runtime"] for x in r["latency"]} == {"pytorch eager", "onnx"}
