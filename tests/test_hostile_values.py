"""Values that are accepted but poison the result, and the tracebacks that remained: each class is
checked at its root (the strict decoder, the training loop, the read-back of records, the CLI's
option types) over every field or option it covers, not only the examples of the issue."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
import typing
from pathlib import Path

import click
import pytest
import torch
from conftest import TINY_TOML, assert_one_line_error, run_dcl
from torch import nn

from dcl_core.config import INT_MAX, SEED_MAX
from dcl_core.errors import ConfigError, DclError
from toolkit.cli import cli, main

METHODS = ("dcccl", "iciia", "coda")


def _load_config(method: str):
    from toolkit.registry import get_method

    return get_method(method).load_config


def _config_class(method: str) -> type:
    return type(_load_config(method)(None, False, None))


def _numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, type, dataclasses.Field]]:
    """Every int or float leaf of a config dataclass (list items included): (dotted key, type, field)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _numeric_fields(tp, f"{prefix}{f.name}.")
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        leaf = args[0]
        if typing.get_origin(leaf) in (list, tuple):
            leaf = typing.get_args(leaf)[0]
        if leaf in (int, float):
            out.append((f"{prefix}{f.name}", leaf, f))
    return out


def _config_classes_with_ints() -> list[type]:
    seen: list[type] = []

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.append(cls)
        for tp in typing.get_type_hints(cls).values():
            if dataclasses.is_dataclass(tp):
                walk(tp)

    for m in METHODS:
        walk(_config_class(m))
    return [c for c in seen if any(tp is int and "." not in key for key, tp, _f in _numeric_fields(c))]


def _nested(key: str, value) -> dict:
    *tables, leaf = key.split(".")
    data: dict = {}
    node = data
    for t in tables:
        node = node.setdefault(t, {})
    node[leaf] = value
    return data


# -- A. config values: non-finite floats, absurd ints, refused before any work -------------------

# 1e400 reads as inf in JSON and TOML; 1e300 is finite but overflows float32, what torch trains in
HOSTILE_FLOATS = (math.inf, -math.inf, math.nan, 1e400, 1e300, -1e300)
HOSTILE_INTS = (10**20, 2**64, -(10**20))


@pytest.mark.parametrize("method", METHODS)
def test_every_numeric_config_field_refuses_hostile_values(method, tmp_path):
    """Every int and float key of every method's config, through its loader and a JSON file."""
    load = _load_config(method)
    fields = _numeric_fields(_config_class(method))
    assert len(fields) > 15
    for key, tp, f in fields:
        is_list = "list" in str(f.type)
        values = HOSTILE_FLOATS if tp is float else HOSTILE_INTS
        for v in values:
            p = tmp_path / "c.json"
            p.write_text(json.dumps({method: _nested(key, [v] if is_list else v)}))
            with pytest.raises(ConfigError) as e:
                load(str(p), False, None)
            msg = str(e.value)
            assert key.rpartition(".")[2] in msg and "must be" in msg and "\n" not in msg, (key, v, msg)


def _has_upper_bound(f: dataclasses.Field) -> bool:
    bounds = f.metadata.get("bounds", {})
    return "le" in bounds or "lt" in bounds


@pytest.mark.parametrize("cls", [pytest.param(c, id=c.__name__) for c in _config_classes_with_ints()])
def test_every_int_config_field_has_an_upper_bound(cls):
    hints = typing.get_type_hints(cls)
    unbounded = [f.name for f in dataclasses.fields(cls)
                 if int in (hints[f.name], *typing.get_args(hints[f.name]),
                            *(a for x in typing.get_args(hints[f.name]) for a in typing.get_args(x)))
                 and not _has_upper_bound(f)]
    assert unbounded == [], f"{cls.__name__}: int fields without an upper bound: {unbounded}"


@pytest.mark.parametrize("method", METHODS)
def test_seed_range_is_the_same_everywhere(method):
    f = next(f for f in dataclasses.fields(_config_class(method)) if f.name == "seed")
    assert f.metadata["bounds"] == {"ge": 0, "le": SEED_MAX}
    train = cli.commands["train"]
    seed = next(p for p in train.params if p.name == "seed")
    assert isinstance(seed.type, click.IntRange) and (seed.type.min, seed.type.max) == (0, SEED_MAX)


ISSUE_VALUES = [
    ("cloud.lr", math.inf, "cloud.lr: must be a finite number > 0"),
    ("cloud.lr", 1e300, "cloud.lr: must be a finite float32 number"),  # was an overflow traceback in SGD
    ("split.ratio", math.inf, "split.ratio: must be a finite number > 0"),
    ("split.widths", [10**12, 8], "split.widths[0]: must be >= 2 and <= 8192"),
    ("rounds", 1e20, "rounds: expected int, got 1e+20 (allowed: >= 1 and <= 10000)"),
    ("rounds", 10**20, "rounds: must be >= 1 and <= 10000"),
    ("seed", 10**20, f"seed: must be >= 0 and <= {SEED_MAX}"),
    ("seed", -1, f"seed: must be >= 0 and <= {SEED_MAX}"),
    ("cloud.epochs", 10**9, "cloud.epochs: must be >= 0 and <= 10000"),
    ("mimic.temperature", math.nan, "mimic.temperature: must be a finite number > 0"),
    ("cloud_model.image_size", 10**6, "image_size: must be >= 32 and <= 1024"),
]


@pytest.mark.parametrize("key, value, needle", ISSUE_VALUES)
def test_train_refuses_hostile_config_values_in_one_line_before_work(tiny_config, tmp_path, key, value, needle,
                                                                      capsys):
    import tomllib

    from dcl_core.config import merge

    cfg = tmp_path / "c.json"
    base = tomllib.loads(tiny_config.read_text())
    cfg.write_text(json.dumps(merge(base, {"dcccl": _nested(key, value)})))
    t0 = time.perf_counter()
    assert main(["train", "dcccl", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert time.perf_counter() - t0 < 10  # refused before data loading or training
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "tiny.toml"]


def test_toml_inf_and_nan_are_refused_through_the_real_cli(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_TOML.replace("[dcccl.cloud]\n", "[dcccl.cloud]\nlr = inf\n"))
    assert_one_line_error(run_dcl("train", "dcccl", "--config", str(cfg), "--out", str(tmp_path / "run")),
                          "cloud.lr", "finite")
    assert not (tmp_path / "run").exists()


def test_a_float_key_given_a_huge_int_is_one_line(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"dcccl": {"cloud": {"lr": 1' + "0" * 400 + "}}}")  # float() of it overflows
    with pytest.raises(ConfigError, match="cloud.lr: must be a finite number"):
        _load_config("dcccl")(str(p), False, None)


def test_records_decoded_strictly_cap_unbounded_ints_at_int64():
    from dcl_core.config import from_dict

    @dataclasses.dataclass
    class Record:
        count: int = 0
        ratio: float = 0.0

    assert from_dict(Record, {"count": INT_MAX}).count == INT_MAX
    with pytest.raises(ConfigError, match="count: must be <= 9223372036854775807"):
        from_dict(Record, {"count": INT_MAX + 1})
    with pytest.raises(ConfigError, match="ratio: must be a finite number, got nan"):
        from_dict(Record, {"ratio": math.nan})


# -- B. unknown keys: refused at every level, naming the closest key ----------------------------

# stray keys beside a real (tiny) [dcccl] table: before, the run trained and the stray key was lost
@pytest.mark.parametrize("text, needle", [
    (TINY_TOML + "\n[dccl_typo]\nrounds = 5\n", "table [dccl_typo] is outside [dcccl]"),
    (TINY_TOML + "\n[splitt]\nratio = 5.0\n", "did you mean [dcccl.split]?"),
    ("stray = 3\n" + TINY_TOML, "key 'stray' is outside [dcccl]"),
    ("roundz = 3\n" + TINY_TOML, "did you mean 'rounds'?"),
    ("[dccl]\nrounds = 1\n", "unknown key 'dccl'; did you mean 'dcccl'?"),
    ("[dcccl]\nroundz = 3\n", "unknown key 'roundz'; did you mean 'rounds'?"),
    ("[dcccl.cloud]\nmomentun = 0.5\n", "cloud: unknown key 'momentun'; did you mean 'momentum'?"),
    ("dcccl = 3\n", "must be a table of keys"),
])
def test_unknown_and_stray_keys_are_refused_naming_the_closest(tmp_path, text, needle, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    assert main(["train", "dcccl", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method, text, needle", [
    ("iciia", "[iciia]\nseed = 1\n[backbone]\nfrozen = true\n", "did you mean [iciia.backbone]?"),
    ("coda", "[coda.matching]\nretreive_max = 5\n", "did you mean 'retrieve_max'?"),
    ("coda", "[coda]\nseed = 1\n[dcccl]\nrounds = 2\n", "table [dcccl] is outside [coda]"),
])
def test_other_methods_refuse_stray_keys_too(tmp_path, method, text, needle):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]").replace("?", r"\?")):
        _load_config(method)(str(cfg), False, None)


# -- C. a diverging run stops with one line and writes nothing ---------------------------------

class _Pairs:
    def __init__(self, n: int = 64):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, index):
        return self.x[index], self.y[index]


class _Steep(nn.Module):
    """A finite loss whose gradient (100 per weight) times a huge learning rate overflows float32."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x, y):
        return (self.w * 100).sum() + 0 * x.sum()


class _CE(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x, y):
        return nn.functional.cross_entropy(self.net(x), y)


def test_fit_stops_when_the_loss_is_not_finite():
    from toolkit.train import OptimConfig, fit

    cfg = OptimConfig(optimizer="sgd", lr=1e30, momentum=0.0, weight_decay=0.0, epochs=3, batch_size=16)
    with pytest.raises(ConfigError, match=r"training diverged: the loss became (nan|inf) in toy epoch 1/3; lower "
                                          r"its learning rate \(now 1e\+30"):
        fit(_CE(), _Pairs(), cfg, seed=0, desc="toy", distributed=False)


def test_fit_stops_on_weights_a_last_step_made_non_finite():
    from toolkit.train import OptimConfig, fit

    model = _Steep()
    cfg = OptimConfig(optimizer="sgd", lr=1e38, momentum=0.0, weight_decay=0.0, epochs=1, batch_size=64)
    # one step: its loss is finite, its weights are not
    with pytest.raises(ConfigError, match=r"toy \(the weights after its last step\)"):
        fit(model, _Pairs(), cfg, seed=0, desc="toy", distributed=False)


def test_iciia_per_client_finetune_stops_when_it_diverges():
    from toolkit.methods.iciia.config import FinetuneConfig
    from toolkit.methods.iciia.pipeline import finetune_heads

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 8, generator=g), torch.randint(0, 3, (30,), generator=g)
    with pytest.raises(ConfigError, match="per-client fine-tuning"):
        finetune_heads(nn.Linear(8, 3), [x], [y], FinetuneConfig(shots=20, steps=5, lr=3e38))


@pytest.mark.parametrize("key, stage", [("cloud.lr", "cloud f_c epoch 1/4"), ("device.lr", "dcccl mimic r1")])
def test_train_with_a_huge_learning_rate_exits_non_zero_and_writes_nothing(tiny_config, tmp_path, key, stage):
    table, leaf = key.split(".")
    text = tiny_config.read_text().replace(f"[dcccl.{table}]\n", f"[dcccl.{table}]\n{leaf} = 1e30\n")
    cfg = tmp_path / "huge_lr.toml"
    cfg.write_text(text)
    proc = run_dcl("train", "dcccl", "--config", str(cfg), "--out", str(tmp_path / "run"), "--json")
    assert_one_line_error(proc, "training diverged", stage, "lower its learning rate", "nothing was written")
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge_lr.toml", "tiny.toml"]


# -- D. records read back: run metrics for `dcl compare`, results.json for `dcl profile --compare`

def _copy(src: Path, dst: Path, file: str, change) -> Path:
    shutil.copytree(src, dst)
    record = json.loads((dst / file).read_text())
    change(record)
    (dst / file).write_text(json.dumps(record))
    return dst


def _score(value):
    return lambda m: m["results"]["dcccl_mimic"].__setitem__("union_test", value)


@pytest.mark.parametrize("file, change, needle", [
    ("metrics.json", _score(1.8e19), "results.dcccl_mimic.union_test: must be >= 0 and <= 100, got 1.8e+19"),
    ("metrics.json", _score("71.2"), "union_test: expected a number >= 0 and <= 100, got '71.2'"),
    ("metrics.json", _score(math.nan), "union_test: must be a finite number"),
    ("metrics.json", _score(-math.inf), "union_test: must be a finite number"),
    ("metrics.json", _score(-3.0), "union_test: must be >= 0 and <= 100, got -3.0"),
    ("metrics.json", _score(True), "union_test: expected a number"),
    ("metrics.json", lambda m: m["results"].__setitem__("cloud_only", [1, 2]), "expected a table of scores"),
    ("config.json", lambda c: c["config"].__setitem__("rounds", "ten"), "config.rounds: expected int, got 'ten'"),
    ("config.json", lambda c: c["config"].__setitem__("seed", [3]), "config.seed: expected int"),
    ("config.json", lambda c: c["config"]["cloud"].__setitem__("lr", math.nan), "config.cloud.lr: must be a finite"),
    ("config.json", lambda c: c.__setitem__("config", "x"), "has no \"config\" table"),
])
def test_compare_refuses_poisoned_run_records(tiny_run, tmp_path, file, change, needle, capsys):
    src = tiny_run[0]
    good = tmp_path / "good"
    shutil.copytree(src, good)
    bad = _copy(src, tmp_path / "bad", file, change)
    assert main(["compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and str(bad) in err[0], err
    assert "re-run `dcl train`" in err[0]  # `dcl eval` prints; it never rewrites metrics.json


def test_compare_reads_auc_scores_in_0_1():
    from toolkit.run import score_range

    assert score_range("user_auc") == score_range("auc") == (0.0, 1.0)
    assert score_range("union_test") == score_range("test_acc") == (0.0, 100.0)


def _results_file(tmp_path: Path, name: str, change=None) -> Path:
    from runtime_harness.devices.base import DeviceInfo
    from runtime_harness.metrics import Measurement, latency_stats
    from runtime_harness.report.results import ArtifactResult, ProfileResults

    samples = [0.0010, 0.0011, 0.0012, 0.0013]
    device = DeviceInfo("host", "vm", "host", "cpu", "x86_64", "Linux", "fp", False)
    art = ArtifactResult(name="step", format="onnx", kind="training", sha256="a" * 64, bytes=1000,
                         latency=latency_stats(samples), load_s=0.01, first_s=0.002, batch_size=8,
                         per_sample_s=0.0001, samples_s=samples,
                         energy=Measurement(-0.001, "J", "measured:power-rails", note="net of idle power"))
    p = tmp_path / name
    ProfileResults(device=device, artifacts=[art], target="host").write(p)
    if change:
        raw = json.loads(p.read_text())
        change(raw["artifacts"][0])
        p.write_text(json.dumps(raw))
    return p


def _set(path: str, value):
    def change(art):
        *parents, leaf = path.split(".")
        node = art
        for k in parents:
            node = node[k]
        node[leaf] = value
    return change


@pytest.mark.parametrize("path, value, needle", [
    ("latency.p50_s", -0.001, "latency.p50_s: must be >= 0 and <= 604800"),
    ("latency.p99_s", math.inf, "latency.p99_s: must be a finite number"),
    ("latency.mean_s", math.nan, "latency.mean_s: must be a finite number"),
    ("latency.max_s", 1.8e19, "latency.max_s: must be >= 0 and <= 604800, got 1.8e+19"),
    ("latency.n", -4, "latency.n: must be >= 0"),
    ("load_s", -1.0, "load_s: must be >= 0"),
    ("per_sample_s", 1e9, "per_sample_s: must be >= 0 and <= 604800"),
    ("samples_s", [0.001, math.nan], "samples_s[1]: must be a finite number"),
    ("bytes", -1, "bytes: must be >= 0"),
    ("energy.value", math.inf, "energy.value: must be a finite number"),
])
def test_profile_compare_refuses_poisoned_results(tmp_path, path, value, needle, capsys):
    good = _results_file(tmp_path, "a.json")
    bad = _results_file(tmp_path, "b.json", _set(path, value))
    assert main(["profile", "--compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "re-run `dcl profile`" in err[0], err


def test_profile_compare_still_reads_good_results_with_a_negative_net_energy(tmp_path, capsys):
    """A guard that the checks are not too tight (it passed before this change too): an energy
    net of idle power may be negative, and real results compare."""
    a, b = _results_file(tmp_path, "a.json"), _results_file(tmp_path, "b.json")
    assert main(["profile", "--compare", str(a), str(b), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["metric"] == "p50 ms" and r["ratio"] == 1.0 for r in rows)


def test_load_results_refuses_a_json_list(tmp_path):
    from runtime_harness.report.results import load_results

    p = tmp_path / "r.json"
    p.write_text("[1, 2]")
    with pytest.raises(DclError, match="holds a JSON list, not an object"):
        load_results(p)


# -- E. tracebacks that remained, and options that took poison ---------------------------------

@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML's Python bindings exist on macOS")
@pytest.mark.parametrize("runtime", ["coreml", "mlpackage", "CoreML"])
def test_simulate_coreml_on_linux_names_the_runtimes_that_can(tiny_run, runtime, capsys):
    assert main(["simulate", str(tiny_run[0]), "--runtime", runtime]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Core ML runs only on macOS" in err[0], err
    assert "runtimes that can run here: executorch, onnx, tflite" in err[0]


@pytest.mark.parametrize("seed", ["18446744073709551616", "18446744073709551615", str(2**63 - 1), "4294967296",
                                  "-1"])
def test_seed_past_its_range_is_refused_by_every_command_that_takes_one(tiny_config, tmp_path, seed, capsys):
    commands = [name for name, c in cli.commands.items() if any(p.name == "seed" for p in c.params)]
    assert commands == ["train"]
    assert main(["train", "dcccl", "--config", str(tiny_config), "--seed", seed, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seed" in err[0], err
    assert not (tmp_path / "r").exists()


def test_the_largest_seed_trains_through_every_derived_seed(tiny_config, tmp_path):
    """SEED_MAX itself must work: derived seeds (seed * 1000 + epoch, ...) stay inside int64 (a guard
    that the bound is not too tight; it passed before this change too)."""
    proc = run_dcl("train", "dcccl", "--config", str(tiny_config), "--seed", str(SEED_MAX), "--out",
                   str(tmp_path / "r"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]


def _float_options() -> list[tuple[str, click.Option]]:
    return [(name, p) for name, c in cli.commands.items() for p in c.params
            if isinstance(p, click.Option) and isinstance(p.type, click.FloatRange)]


def test_every_float_option_refuses_nan_and_inf():
    from toolkit.cli import FiniteFloatRange

    options = _float_options()
    assert {(c, p.name) for c, p in options} >= {("export", "lr"), ("profile", "duration"), ("profile", "sustained")}
    for command, p in options:
        for bad in ("nan", "inf", "-inf", "1e999", "1e300"):
            with pytest.raises(click.BadParameter):
                p.type.convert(bad, p, None)
        assert isinstance(p.type, FiniteFloatRange), (command, p.name)


@pytest.mark.parametrize("args, needle", [
    (["profile", "B", "--duration", "nan"], "--duration"),
    (["profile", "B", "--sustained", "nan"], "--sustained"),
    (["export", "R", "--target", "host", "--lr", "inf"], "--lr"),
    (["export", "R", "--target", "host", "--lr", "nan"], "--lr"),
    (["export", "R", "--target", "host", "--lr", "1e300"], "--lr"),  # was an overflow traceback in SGD
    (["profile", "B", "--runs", "99999999999999999999"], "--runs"),
    (["simulate", "R", "--runtime", "onnx", "--rounds", "99999999999999999999"], "--rounds"),
    (["simulate", "R", "--runtime", "onnx", "--devices", "99999999999999999999"], "--devices"),
    (["simulate", "R", "--runtime", "onnx", "--epochs", "99999999999999999999"], "--epochs"),
])
def test_options_refuse_non_finite_and_absurd_numbers_up_front(args, needle, tmp_path, capsys):
    """Refused as option values, before the (here missing) run or bundle is even looked at."""
    args = [str(tmp_path / a) if a in ("B", "R") else a for a in args]
    t0 = time.perf_counter()
    assert main(args) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Invalid value" in err[0], err
