import pytest
from conftest import assert_one_line_error, run_dcl

from dcl_core.errors import ConfigError
from exporters.targets import all_targets, get_target, resolve_formats


def test_at_least_eight_real_phones_plus_host():
    ts = all_targets()
    phones = [t for t in ts.values() if t.os in ("android", "ios")]
    assert "host" in ts and len(phones) >= 8
    for t in phones:
        assert t.soc and t.ram_gb > 0 and t.formats and t.cpu_power_w > 0
    assert all("coreml" not in t.formats for t in phones if t.os == "android")
    assert all("coreml" in t.formats and "tflite" not in t.formats for t in phones if t.os == "ios")


def test_unknown_target_lists_close_names():
    with pytest.raises(ConfigError, match="pixel-8"):
        get_target("pixel8")


def test_formats_must_apply_to_the_target():
    assert resolve_formats(get_target("pixel-8"), None) == ["executorch", "onnx", "tflite"]
    with pytest.raises(ConfigError, match="coreml"):
        resolve_formats(get_target("pixel-8"), ["coreml"])


def test_cli_targets_and_unknown_target(tmp_path):
    out = run_dcl("targets")
    assert out.returncode == 0 and "pixel-8" in out.stdout and "iphone-15" in out.stdout
    assert_one_line_error(run_dcl("export", str(tmp_path), "--target", "pixel8"), "did you mean")
