import pytest
import torch

from dcl_core.errors import ConfigError
from toolkit.models import ChannelSplitCNN, EfficientNetLite0, MobileCNN, PadLogits, create_model, split_widths
from toolkit.models.efficientnet_lite import weights_path


def test_mobilecnn_shapes_and_blocks():
    m = MobileCNN(20, (8, 16, 32), se=True)
    assert m(torch.rand(3, 1, 28, 28)).shape == (3, 20)
    kinds = {type(x).__name__ for x in m.modules()}
    assert {"Conv2d", "BatchNorm2d", "Hardswish", "SqueezeExcite", "Linear"} <= kinds
    dw = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d) and x.groups > 1]
    assert dw and all(c.groups == c.in_channels for c in dw)  # depthwise convs


def test_split_widths_ratio():
    cloud, device = split_widths([64, 128, 256], 7.0)
    assert device == [8, 16, 32] and cloud == [56, 112, 224]


def test_split_branches_never_mix_and_logits_sum():
    torch.manual_seed(0)
    m = ChannelSplitCNN(20, (16, 32, 64), ratio=3.0).eval()
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(m(x), m.cloud(x) + m.device(x))
    m.device(x).sum().backward()  # the device branch's output depends on no cloud weight
    assert all(p.grad is None for p in m.cloud.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.device.parameters())


def test_split_cloud_head_covers_only_cloud_classes():
    m = ChannelSplitCNN(20, (16, 32), ratio=3.0, cloud_classes=10).eval()
    out = m.cloud(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 20) and torch.all(out[:, 10:] == 0) and torch.any(out[:, :10] != 0)


def test_pad_logits():
    p = PadLogits(MobileCNN(3, (4, 8)), 7).eval()
    out = p(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 7) and torch.all(out[:, 3:] == 0)


def test_registry_unknown_name():
    with pytest.raises(ConfigError, match="known models"):
        create_model("resnet9000", 10)


def test_efficientnet_lite0_loads_the_packaged_imagenet_weights():
    m = EfficientNetLite0(20, image_size=64).eval()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    ours = m.net.state_dict()
    assert torch.equal(ours["_conv_stem.weight"], state["_conv_stem.weight"])
    assert ours["_fc.weight"].shape == (20, 1280)
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 20)


def test_efficientnet_lite0_classifies_real_imagenet_images():
    """The packaged weights are the real ImageNet model: 17/20 top-1 on foolbox's ImageNet images
    at 224x224 with the package's (x - 127) / 128 normalisation (as its package documents)."""
    from efficientnet_lite_pytorch import EfficientNet

    from toolkit.data.sources import load_foolbox_images

    net = EfficientNet.from_name("efficientnet-lite0", image_size=224)
    net.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    net.eval()
    images, labels = load_foolbox_images("imagenet", size=224)
    x = (images.float() - 127.0) / 128.0
    with torch.no_grad():
        top1 = (net(x).argmax(-1) == labels).sum().item()
    assert len(labels) == 20 and top1 >= 17
