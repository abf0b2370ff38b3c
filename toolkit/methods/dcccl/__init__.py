"""DC-CCL: device-cloud collaborative controlled learning (arXiv 2303.10361)."""
from toolkit.methods.dcccl.config import DCCCLConfig, load_config
from toolkit.methods.dcccl.models import DCCCLModels, build_models, device_program, served
from toolkit.methods.dcccl.pipeline import RESULTS, evaluate, evaluate_run, load_run, train, train_to_dir

__all__ = ["DCCCLConfig", "DCCCLModels", "RESULTS", "build_models", "device_program", "evaluate", "evaluate_run",
           "load_config", "load_run", "served", "train", "train_to_dir"]
