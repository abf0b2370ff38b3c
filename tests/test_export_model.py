"""`dcl export --model pkg.module:factory`: a user's own model, inference-only or with training."""
from __future__ import annotations

import json
import os
import textwrap

import pytest
from conftest import assert_one_line_error, run_dcl

USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    class Scorer(nn.Module):
        """Not in README: LayerNorm, SiLU, a residual MLP, softmax output."""
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(12)
            self.fc1, self.fc2 = nn.Linear(12, 24), nn.Linear(24, 12)
            self.out = nn.Linear(12, 3)
        def forward(self, x):
            h = self.norm(x)
            h = h + self.fc2(nn.functional.silu(self.fc1(h)))
            return torch.softmax(self.out(h), dim=-1)

    def scorer():
        torch.manual_seed(0)
        return Scorer().eval(), (torch.rand(1, 12),)

    def broken():
        raise RuntimeError("weights file missing")

    def wrong():
        return 42
''')


@pytest.fixture
def user_env(tmp_path):
    (tmp_path / "user_models.py").write_text(USER_MODULE)
    return {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_inference_only_factory(user_env, tmp_path):
    out = tmp_path / "bundle"
    proc = run_dcl("export", "--model", "user_models:scorer", "--target", "host", "--formats", "onnx,executorch",
                   "--out", str(out), "--json", env=user_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(proc.stdout)
    assert manifest["method"] == "custom" and manifest["extra"]["model"] == "user_models:scorer"
    (program,) = manifest["programs"]
    assert program["name"] == "scorer"
    assert [(a["format"], a["kind"]) for a in program["artifacts"]] == [("onnx", "inference"), ("executorch", "inference")]
    assert all(a["validation"]["checked"] and a["validation"]["passed"] for a in program["artifacts"])


def test_factory_returning_a_program_spec_adds_training(tmp_path):
    out = tmp_path / "bundle"
    proc = run_dcl("export", "--model", "toolkit.models.corpus:resnet", "--target", "host", "--formats", "onnx",
                   "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (program,) = json.loads(proc.stdout)["programs"]
    kinds = {a["kind"]: a for a in program["artifacts"]}
    assert set(kinds) == {"inference", "training"} and kinds["training"]["validation"]["passed"]
    assert "fc.weight" in kinds["training"]["trainable"] and "stem.0.weight" in kinds["training"]["trainable"]


@pytest.mark.parametrize("ref, needle", [
    ("user_models", "package.module:factory"),
    ("no_such_module_xyz:f", "no module"),
    ("user_models:nope", "has no function 'nope'"),
    ("user_models:broken", "RuntimeError: weights file missing"),
    ("user_models:wrong", "returned int"),
])
def test_bad_factories_are_one_line(user_env, tmp_path, ref, needle):
    proc = run_dcl("export", "--model", ref, "--target", "host", "--out", str(tmp_path / "b"), env=user_env)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "b").exists()


def test_run_dir_and_model_are_exclusive(tiny_run, tmp_path):
    proc = run_dcl("export", str(tiny_run[0]), "--model", "toolkit.models.corpus:resnet", "--target", "host")
    assert proc.returncode != 0 and "either a RUN_DIR or --model" in proc.stderr
    proc = run_dcl("export", "--target", "host")
    assert proc.returncode != 0 and "either a RUN_DIR or --model" in proc.stderr
