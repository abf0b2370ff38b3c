"""The control idea of DC-CCL, checked exactly, plus the pieces of the device rounds."""
import copy

import torch
import torch.nn.functional as F

from runtime_harness.fleet.local import weighted_average as average_states
from toolkit.methods.dcccl.objectives import Controlled
from toolkit.models import MobileCNN, PadLogits
from toolkit.train import Distill, frozen


def _grads(module, loss):
    module.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in module.parameters()]


def _pair(seed=0):
    torch.manual_seed(seed)
    f_c = PadLogits(MobileCNN(10, (16, 32, 64)), 20)
    for m in f_c.modules():  # non-trivial BN statistics so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    f_d = MobileCNN(20, (4, 8, 16))
    return frozen(f_c), f_d


def test_controlled_gradient_with_exact_mimic_equals_true_fused_gradient():
    f_c, f_d = _pair()
    g = copy.deepcopy(f_c)  # a perfect mimic
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 20, (16,))
    obj = Controlled(f_d, g).train()
    controlled = _grads(f_d, obj(x, y))
    f_d.train()
    fused = _grads(f_d, F.cross_entropy(f_c(x) + f_d(x), y))  # the true served model's loss
    assert len(controlled) == len(fused)
    for a, b in zip(controlled, fused):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in g.parameters())  # g stays frozen inside the step


def test_controlled_gradient_differs_when_the_mimic_is_off():
    f_c, f_d = _pair()
    g = copy.deepcopy(f_c)
    with torch.no_grad():
        g.model.classifier.bias.add_(1.0 * torch.arange(10))
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 20, (16,))
    controlled = _grads(f_d, Controlled(f_d, g).train()(x, y))
    f_d.train()
    fused = _grads(f_d, F.cross_entropy(f_c(x) + f_d(x), y))
    assert max((a - b).abs().max().item() for a, b in zip(controlled, fused)) > 1e-4


def test_control_stays_in_eval_mode_during_training():
    f_c, f_d = _pair()
    obj = Controlled(f_d, f_c).train()
    assert obj.trainable.training and not obj.control.training
    before = [b.clone() for b in f_c.buffers()]
    obj(torch.rand(8, 1, 28, 28), torch.randint(0, 20, (8,))).backward()
    assert all(torch.equal(a, b) for a, b in zip(before, f_c.buffers()))  # BN stats untouched


def test_distill_losses():
    f_c, _ = _pair()
    student = PadLogits(MobileCNN(10, (4, 8)), 20)
    x = torch.rand(8, 1, 28, 28)
    assert Distill(copy.deepcopy(f_c), f_c, "mse")(x).item() == 0.0
    assert abs(Distill(copy.deepcopy(f_c), f_c, "kl", 4.0)(x).item()) < 1e-6
    assert Distill(student, f_c, "mse")(x).item() > 0 and Distill(student, f_c, "kl")(x).item() > 0


def test_average_states_weighted_and_counters():
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, 6.0]), "n": torch.tensor(5)}
    out = average_states([a, b], [1, 3])
    assert torch.allclose(out["w"], torch.tensor([3.0, 5.0])) and out["n"].item() == 5
