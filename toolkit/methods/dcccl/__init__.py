"""DC-CCL: device-cloud collaborative controlled learning (METHODS.md section 1)."""
from toolkit.methods.dcccl.config import DCCCLConfig, load_config
from toolkit.methods.dcccl.models import DCCCLModels, Fused, build_models
from toolkit.methods.dcccl.pipeline import RESULTS, evaluate, evaluate_run, load_run, train, train_to_dir

__all__ = ["DCCCLConfig", "DCCCLModels", "Fused", "RESULTS", "build_models", "evaluate", "evaluate_run",
           "load_config", "load_run", "train", "train_to_dir"]
