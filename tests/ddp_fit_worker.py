"""Worker for test_ddp.py: one fit() on fixed data; rank 0 saves the final weights and losses.

Run alone (world of one) or under torchrun; the loop code is the same either way.
"""
import json
import sys

import torch
from safetensors.torch import save_file

from toolkit.distributed import context, shutdown
from toolkit.methods.dcccl.scenario import ScenarioConfig, build_dcccl_scenario
from toolkit.models import MobileCNN
from toolkit.train import OptimConfig, Supervised, fit

out, train_mode = sys.argv[1], sys.argv[2] == "train"
torch.set_num_threads(1)
torch.manual_seed(0)
data = build_dcccl_scenario(ScenarioConfig(cloud_train_limit=512, num_devices=1), 0).cloud_train
model = MobileCNN(20, (8, 16, 32))
hist = fit(Supervised(model), data, OptimConfig(lr=0.05, epochs=2, batch_size=64), seed=5,
           train_mode=train_mode)
if context().is_main:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out + ".safetensors")
    with open(out + ".json", "w") as f:
        json.dump({"world": context().world_size, "loss": hist}, f)
shutdown()
