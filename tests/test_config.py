import pytest
from conftest import assert_one_line_error, run_dcl

from dcl_core.config import to_dict
from dcl_core.errors import ConfigError
from toolkit.methods.dcccl.config import load_config
from toolkit.methods.dcccl.config import QUICK


def test_defaults_and_quick_differ_only_where_quick_says():
    full, quick = load_config(), load_config(quick=True)
    f, q = to_dict(full), to_dict(quick)
    assert {k for k in f if f[k] != q[k]} <= set(QUICK)
    assert quick.rounds == full.rounds == 10 and full.mimic.optim.epochs == 6 and full.device.lr == 0.05
    assert quick.mimic.optim.epochs == 12 and quick.device.lr == 0.02 and quick.threads == 1
    assert quick.scenario.cloud_train_limit == 8000 and full.scenario.cloud_train_limit == 0
    assert quick.split == full.split


def test_file_overrides_and_seed(tiny_config):
    cfg = load_config(str(tiny_config), seed=11)
    assert cfg.seed == 11 and cfg.split.widths == [16, 32, 64] and cfg.split.ratio == 3.0
    assert cfg.device.lr == load_config().device.lr  # untouched keys keep their defaults


def test_unknown_key_is_rejected_with_its_name(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[dcccl.cloud]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(str(p))


@pytest.mark.parametrize("text, needle", [
    ('[dcccl]\nmode = "diagonal"\n', "diagonal"),
    ('[dcccl]\nrounds = "three"\n', "rounds"),
    ('[dcccl\n', "not valid"),
])
def test_bad_values_are_rejected(tmp_path, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(str(p))


def test_cli_bad_config_key_is_one_line(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[dcccl]\nroundz = 3\n")
    proc = run_dcl("train", "dcccl", "--config", str(p), "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "roundz")
    assert not (tmp_path / "run").exists()


def test_cli_missing_config_file_is_one_line(tmp_path):
    proc = run_dcl("train", "dcccl", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "does not exist")
