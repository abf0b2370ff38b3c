"""ICIIA: the module's semantics and cost, the client split, streaming history, export parity
for empty/partial/full histories, and `dcl train iciia` end to end on a tiny config."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_dcl

from toolkit.methods.iciia.clients import build_clients
from toolkit.methods.iciia.config import ClientsConfig, load_config
from toolkit.methods.iciia.features import ClientSets, RingBuffer, SetLoss, stream_sets
from toolkit.methods.iciia.model import (
    ICIIA,
    FeatureExtractor,
    PartitionedLinear,
    StreamingClassifier,
    count_flops,
    formula_macs,
    projection_params,
)
from toolkit.models import create_model

TINY_TOML = """
[iciia]
seed = 3
threads = 1

[iciia.backbone]
widths = [8, 16, 32]

[iciia.backbone.train]
epochs = 1
batch_size = 64

[iciia.clients]
train_clients = 12
val_clients = 4
test_clients = 4
images_per_client = 48

[iciia.attention]
history = 7
partitions = 4
sweep = [2]
max_epochs = 2
patience = 1

[iciia.finetune]
shots = 8
steps = 5
"""

RESULTS = {"backbone", "finetune_last", "iciia_b", "iciia_t", "iciia_t_noshuffle"}


# ----------------------------------------------------------------------------- module


def test_module_shapes_and_streaming_program_outputs():
    torch.manual_seed(0)
    m = ICIIA(32, 20, layers=2, heads=4, partitions=4).eval()
    assert m(torch.randn(3, 8, 32), torch.ones(3, 8)).shape == (3, 8, 20)
    prog = StreamingClassifier(FeatureExtractor(create_model("mobilecnn", 20, widths=[8, 16, 32])), m).eval()
    logits, feature, attended = prog(torch.rand(1, 1, 28, 28), torch.randn(7, 32), torch.ones(7))
    assert logits.shape == (1, 20) and feature.shape == (1, 32) and attended.shape == (1, 32)
    assert torch.allclose(m.head(attended), logits)


def test_partitioned_linear_is_block_diagonal_then_shuffled():
    torch.manual_seed(0)
    D, P, g = 16, 4, 4
    plain, shuf = PartitionedLinear(D, P, shuffle=False), PartitionedLinear(D, P, shuffle=True)
    shuf.load_state_dict(plain.state_dict())
    W = plain.dense_weight()  # y = x @ W + b
    mask = torch.block_diag(*[torch.ones(g, g)] * P).bool()
    assert torch.all(W[~mask] == 0) and torch.all(W[mask] != 0), "no-shuffle map must be block-diagonal"
    x = torch.randn(5, D)
    y_plain, y_shuf = plain(x) - plain.bias, shuf(x) - shuf.bias
    # shuffle: (P, D/P) -> transpose -> flatten; element (p, j) goes to j * P + p
    perm = torch.tensor([p * g + j for j in range(g) for p in range(P)])
    assert torch.allclose(y_shuf, y_plain[:, perm])
    # each output group of the plain map depends on its own input group only
    x2 = x.clone()
    x2[:, :g] += 1.0
    changed = (plain(x2) - plain(x)).abs().sum(0) > 0
    assert changed[:g].all() and not changed[g:].any()
    # P = 1 is a dense Linear and has no shuffle
    dense = PartitionedLinear(D, 1)
    assert torch.allclose(dense(x), x @ dense.weight[0] + dense.bias)


@pytest.mark.parametrize("P", [1, 4, 16])
def test_params_and_flops_match_the_paper_formulas(P):
    D, N, B, C = 64, 2, 16, 20
    m = ICIIA(D, C, layers=N, heads=4, partitions=P)
    # weights of the 6 maps: 6 D^2 / P per layer; plus 6 biases and 2 LayerNorms (4 D) per layer
    assert m.attention_params() == projection_params(D, P, N) + 10 * D * N
    flops = count_flops(m, torch.randn(1, B, D), torch.ones(1, B)) - 2 * B * D * C  # minus the head
    assert flops == 2 * formula_macs(D, P, N, B)  # FlopCounterMode: 2 FLOPs per multiply-add


@pytest.mark.parametrize("text, needle", [
    ("[iciia.attention]\nparttions = 4\n", "parttions"),
    ("[iciia.finetune]\nshots = 500\n", "shots"),
    ("[iciia.clients]\nmin_classes = 5\nmax_classes = 3\n", "min_classes"),
    ("[iciia.attention]\ngrad_clip = -1\n", "grad_clip"),
])
def test_bad_configs_are_refused_before_work(tmp_path, text, needle):
    from dcl_core.errors import ConfigError

    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(str(p))


def test_shipped_efficientnet_config_loads():
    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "iciia_efficientnet.toml"))
    assert cfg.backbone.name == "efficientnet_lite0" and cfg.backbone.frozen
    cfg.check_dim(1280)  # every P of the config divides EfficientNet-Lite0's 1280 features


# ----------------------------------------------------------------------------- clients


@pytest.fixture(scope="module")
def clients():
    cfg = ClientsConfig(train_clients=30, val_clients=5, test_clients=10, images_per_client=60)
    return cfg, build_clients(cfg, seed=5)


def test_clients_are_seeded_skewed_and_disjoint(clients):
    cfg, c = clients
    again = build_clients(cfg, seed=5)
    assert all(torch.equal(a, b) for g in c.groups for a, b in zip(c.groups[g], again.groups[g]))
    other = build_clients(cfg, seed=6)
    assert not all(torch.equal(a, b) for a, b in zip(c.groups["test"], other.groups["test"]))
    everything = torch.cat([c.union(g) for g in c.groups])
    assert len(torch.unique(everything)) == len(everything), "clients share an image"
    for g, streams in c.groups.items():
        for own, cls in zip(streams, c.classes[g]):
            labels = set(c.images.y[own].tolist())
            assert labels <= set(cls) and cfg.min_classes <= len(cls) <= cfg.max_classes
            assert 0 < len(own) <= cfg.images_per_client
    # the homogeneous control: the same images, every client far from skewed
    homog = c.homogeneous("test", 1)
    assert torch.equal(torch.sort(torch.cat(homog)).values, torch.sort(c.union("test")).values)
    assert min(len(set(c.images.y[h].tolist())) for h in homog) > cfg.max_classes


# ----------------------------------------------------------------------------- streaming


def test_stream_sets_hold_the_previous_images_newest_first():
    feats = torch.arange(1, 6).float().unsqueeze(1).expand(5, 3)  # image t has feature t + 1
    tokens, valid = stream_sets(feats, history=3)
    assert tokens.shape == (5, 4, 3)
    assert valid.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert tokens[4, :, 0].tolist() == [5, 4, 3, 2] and tokens[1, :, 0].tolist() == [2, 1, 0, 0]


def test_ring_buffer_program_equals_batched_streaming_in_any_slot_order():
    torch.manual_seed(1)
    D, H = 16, 5
    m = ICIIA(D, 20, layers=2, heads=4, partitions=4).eval()
    prog = StreamingClassifier(torch.nn.Identity(), m).eval()  # "images" are the features here
    feats = torch.randn(12, D)
    tokens, valid = stream_sets(feats, H)
    with torch.no_grad():
        batched = m(tokens, valid)[:, 0]
        ring = RingBuffer(H, D)
        for t in range(len(feats)):
            hist, mask = ring.inputs()
            logits, feature, _ = prog(feats[t:t + 1], hist, mask)
            assert torch.allclose(logits[0], batched[t], atol=1e-5), t
            if t == 2:  # empty slots: their content is ignored
                junk = hist.clone()
                junk[mask == 0] = 1e3
                assert torch.allclose(prog(feats[t:t + 1], junk, mask)[0], logits, atol=1e-5)
            if t == 9:  # no positional encoding: the ring's slot order does not matter
                perm = torch.randperm(H)
                assert torch.allclose(prog(feats[t:t + 1], hist[perm], mask[perm])[0], logits, atol=1e-5)
            ring.push(feature.numpy())


def test_training_batches_come_from_one_client_and_mask_padding():
    feats, labels = torch.randn(50, 8), torch.arange(50) % 3
    clients = [torch.arange(0, 20), torch.arange(20, 50)]
    data = ClientSets(feats, labels, clients, tokens=8, sets=2, partial=0.5, seed=0)
    owner = {int(i): k for k, c in enumerate(clients) for i in c}
    for i in range(len(data)):
        idx, valid = data.items[i]
        assert len({owner[int(j)] for j in idx[valid > 0]}) == 1
    tokens, valid, y = data.batch(torch.tensor([0]))
    assert tokens.shape[:3] == valid.shape == y.shape and tokens.shape[0] == 1
    loss = SetLoss(ICIIA(8, 3, heads=2, partitions=2))(tokens, valid, y)
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------- export parity


def _history_cases(D: int, H: int):
    g = torch.Generator().manual_seed(2)
    x, hist = torch.rand(1, 1, 28, 28, generator=g), torch.randn(H, D, generator=g)
    partial = torch.zeros(H)
    partial[: H // 2] = 1
    return {"empty": (x, hist * 0, torch.zeros(H)), "partial": (x, hist * partial[:, None], partial),
            "full": (x, hist, torch.ones(H))}


@pytest.mark.parametrize("formats", [["executorch", "onnx"], ["tflite"]])
def test_classifier_export_is_exact_for_empty_partial_and_full_histories(tmp_path, formats):
    from exporters.api import ProgramSpec, export
    from exporters.runner import open_inference

    torch.manual_seed(0)
    H = 7
    ext = FeatureExtractor(create_model("mobilecnn", 20, widths=[8, 16, 32])).eval()
    prog = StreamingClassifier(ext, ICIIA(ext.dim, 20, layers=2, heads=4, partitions=4)).eval()
    cases = _history_cases(ext.dim, H)
    spec = ProgramSpec("classifier", prog, cases["full"], ["x", "history", "history_mask"],
                       ["logits", "feature", "attended"], validation_inputs=list(cases.values()))
    manifest = export([spec], formats, tmp_path / "b", log=lambda s: None)
    for art in manifest.artifacts:
        runner = open_inference(art.format, tmp_path / "b" / art.path, art)
        for name, case in cases.items():
            with torch.no_grad():
                ref = prog(*case)
            got = runner.infer(dict(zip(["x", "history", "history_mask"], (t.numpy() for t in case))))
            worst = max(float(np.abs(np.asarray(o).reshape(r.shape) - r.numpy()).max()) for o, r in zip(got, ref))
            assert worst <= 1e-4, (art.format, name, worst)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_iciia(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iciia")
    cfg = tmp / "tiny.toml"
    cfg.write_text(TINY_TOML)
    out = tmp / "run"
    proc = run_dcl("train", "iciia", "--config", str(cfg), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout)


def test_train_writes_the_documented_metrics(tiny_iciia):
    out, metrics = tiny_iciia
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["method"] == metrics["method"] == "iciia"
    assert RESULTS <= set(metrics["results"]) and "iciia_t_p2" in metrics["results"]
    for r in metrics["results"].values():
        assert 0.0 <= r["test_acc"] <= 100.0
    assert set(metrics["homogeneous"]) >= {"backbone", "iciia_t"}
    # the same test images: the backbone scores identically with or without the skew
    assert metrics["homogeneous"]["backbone"]["test_acc"] == metrics["results"]["backbone"]["test_acc"]
    c = metrics["cost"]
    assert {"params", "flops", "params_pct", "flops_pct"} <= set(c)
    assert c["flops"] == c["formula_flops"] and c["params"] == c["formula_params"] + 10 * c["dim"] * c["layers"]
    assert json.loads((out / "config.json").read_text())["method"] == "iciia"
    assert load_config(None, quick=True).clients.train_clients < load_config().clients.train_clients


def test_eval_reproduces_the_run(tiny_iciia):
    out, metrics = tiny_iciia
    proc = run_dcl("eval", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads(proc.stdout)
    assert again["results"] == metrics["results"] and again["homogeneous"] == metrics["homogeneous"]


def test_export_bundle_has_three_programs_and_weights_come_back(tiny_iciia, tmp_path):
    out, _ = tiny_iciia
    bundle = tmp_path / "bundle"
    proc = run_dcl("export", str(out), "--target", "host", "--formats", "onnx", "--out", str(bundle), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(proc.stdout)
    assert manifest == json.loads((bundle / "manifest.json").read_text())  # --json prints the manifest
    programs = {p["name"]: p for p in manifest["programs"]}
    assert set(programs) == {"classifier", "head_finetune", "backbone"}
    kinds = {n: {a["kind"] for a in p["artifacts"]} for n, p in programs.items()}
    assert kinds == {"classifier": {"inference"}, "head_finetune": {"inference", "training"}, "backbone": {"inference"}}
    cls = next(a for a in programs["classifier"]["artifacts"])
    assert [i["name"] for i in cls["inputs"]] == ["x", "history", "history_mask"]
    assert [o["name"] for o in cls["outputs"]] == ["logits", "feature", "attended"]

    # a device fine-tunes the head in ONNX Runtime; the weights it returns import into the run
    from dcl_core.bundle import load_manifest
    from exporters.runner import open_training

    m = load_manifest(bundle)
    art = next(a for p in m.programs if p.name == "head_finetune" for a in p.artifacts if a.kind == "training")
    runner = open_training("onnx", bundle / art.path, art)
    shapes = {t.name: (t.shape, t.dtype) for t in art.inputs}
    g = np.random.default_rng(0)
    runner.train_step({"attended": g.random(shapes["attended"][0], dtype=np.float32),
                       "y": g.integers(0, 20, shapes["y"][0])})
    weights = tmp_path / "head.npz"
    np.savez(weights, **runner.get_weights())
    proc = run_dcl("import-weights", str(out), str(weights), "--program", "head_finetune", "--name", "head_c1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from safetensors.numpy import load_file

    saved = load_file(str(out / "checkpoints" / "head_c1.safetensors"))
    returned = {k if k.startswith("head.") else f"head.{k}": v for k, v in runner.get_weights().items()}
    assert set(saved) == set(returned)
    for k, v in returned.items():  # the values the runtime trained, not just a file
        np.testing.assert_array_equal(saved[k], v)


def test_simulate_streams_test_clients_through_the_runtime(tiny_iciia):
    out, _ = tiny_iciia
    proc = run_dcl("simulate", str(out), "--runtime", "onnxruntime", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    assert rec["gap"] <= 0.1 and rec["images"] > 0 and rec["max_logit_diff"] < 1e-3


def test_fleet_streams_every_test_client_in_a_runtime(tiny_iciia):
    """`dcl fleet` for ICIIA: one Flower client per test client, streaming its images through the
    ONNX Runtime classifier artifact; the cloud's accuracy over all images is the run's test_acc."""
    out, metrics = tiny_iciia
    proc = run_dcl("fleet", str(out), "--runtime", "onnx", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["engine"] == "flower-simulation" and res["clients"] == 4
    (r,) = res["rounds"]
    assert (r["clients"], r["failed"], r["refused"]) == (4, 0, 0)
    assert 0 < r["metrics"]["images"] <= 4 * 48
    assert abs(r["accuracy"] - metrics["results"]["iciia_t"]["test_acc"]) <= 0.1
    assert json.loads((out / "fleet-onnx" / "fleet.json").read_text())["complete"] is True
