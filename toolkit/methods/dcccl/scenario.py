"""DC-CCL's cloud/device scenario: which samples the cloud holds and which each device holds.

It models the authors' setup (cloud = ImageNet, device = Stanford Cars, one joint
label space): the cloud holds Fashion-MNIST (labels 0-9), devices hold MNIST digits relabelled
10-19, and the served model is 20-way. Every split is a pure function of the config and the seed.

Split rules (documented in README):
- Fashion-MNIST train is shuffled with the seed; the first `cloud_val` samples are the cloud
  validation set, the rest (capped at `cloud_train_limit` when > 0) is the cloud's training data.
- The 10,000 npm digits are split per class, seeded: `device_test_fraction` to the device test set,
  `device_val_fraction` to the device validation set, the rest is the device pool.
- With C device-domain classes (10 digits), device k holds `classes_per_device` consecutive
  classes starting at k*C//K (mod C), so
  devices are skewed and overlap in classes but never share a sample: each class's pool is dealt
  round-robin to the devices that hold that class. `device_train_per_device` caps each device.
- Each device also holds `overlap_per_device` cloud-domain samples ("a little overlap", taken from
  the cloud's training pool), so the device submodel learns to leave cloud classes alone.
- Test sets: cloud test = Fashion-MNIST test (10k); device test = held-out digits; union = both.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dcl_core.config import bounded
from dcl_core.errors import ConfigError
from toolkit.data.imageset import ImageSet
from toolkit.data.sources import load_fashion_mnist, load_mnist_digits


@dataclass
class ScenarioConfig:
    cloud_dataset: str = "fashion_mnist"
    device_dataset: str = "mnist_digits"
    device_label_offset: int = bounded(10, ge=0, le=1000)
    num_devices: int = bounded(4, ge=1, le=10_000)
    classes_per_device: int = bounded(5, ge=1, le=10)  # the device data set has 10 classes
    device_train_per_device: int = bounded(0, ge=0, le=10**8)  # 0: no cap
    overlap_per_device: int = bounded(100, ge=0, le=10**8)
    cloud_train_limit: int = bounded(0, ge=0, le=10**8)  # 0: all of the cloud's training pool
    cloud_val: int = bounded(5000, ge=1, le=10**8)
    device_test_fraction: float = bounded(0.2, gt=0, lt=1)
    device_val_fraction: float = bounded(0.1, gt=0, lt=1)
    test_limit: int = bounded(0, ge=0, le=10**8)  # 0: full test sets (quick runs cap them)


@dataclass
class Scenario:
    num_classes: int
    cloud_train: ImageSet
    cloud_val: ImageSet
    cloud_test: ImageSet
    devices: list[ImageSet]
    device_val: ImageSet
    device_test: ImageSet
    device_classes: list[list[int]] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "cloud_train": len(self.cloud_train), "cloud_val": len(self.cloud_val),
            "cloud_test": len(self.cloud_test), "device_val": len(self.device_val),
            "device_test": len(self.device_test),
            "devices": [{"samples": len(d), "classes": c} for d, c in zip(self.devices, self.device_classes)],
        }


_LOADERS = {
    "fashion_mnist": lambda: (load_fashion_mnist("train"), load_fashion_mnist("test")),
    "mnist_digits": lambda: (load_mnist_digits(), None),
}


def num_labels(data: ImageSet) -> int:
    return int(data.y.max()) + 1


def joint_num_classes(cfg: ScenarioConfig) -> int:
    """Size of the joint label space: the device domain's classes after the offset."""
    return num_labels(_LOADERS["mnist_digits"]()[0]) + cfg.device_label_offset


def device_class_assignment(num_devices: int, classes_per_device: int, num_device_classes: int) -> list[list[int]]:
    return [[(k * num_device_classes // num_devices + j) % num_device_classes for j in range(classes_per_device)]
            for k in range(num_devices)]


def build_dcccl_scenario(cfg: ScenarioConfig, seed: int) -> Scenario:
    for name in (cfg.cloud_dataset, cfg.device_dataset):
        if name not in _LOADERS:
            raise ConfigError(f"scenario: unknown dataset {name!r}; known: {', '.join(sorted(_LOADERS))}")
    if cfg.cloud_dataset != "fashion_mnist" or cfg.device_dataset != "mnist_digits":
        raise ConfigError("scenario: the DC-CCL scenario needs cloud_dataset='fashion_mnist' and device_dataset='mnist_digits'")
    g = torch.Generator().manual_seed(seed)
    fashion_train, fashion_test = _LOADERS["fashion_mnist"]()
    digits, _ = _LOADERS["mnist_digits"]()
    cloud_classes, device_classes = num_labels(fashion_train), num_labels(digits)
    if not 1 <= cfg.classes_per_device <= device_classes or cfg.num_devices < 1:
        raise ConfigError(f"scenario: need num_devices >= 1 and 1 <= classes_per_device <= {device_classes}")
    if cfg.device_label_offset < cloud_classes:
        raise ConfigError(f"scenario: device_label_offset must be >= {cloud_classes} (the cloud's classes), "
                          f"got {cfg.device_label_offset}")

    perm = torch.randperm(len(fashion_train), generator=g)
    cloud_val = fashion_train.subset(perm[: cfg.cloud_val])
    cloud_pool = fashion_train.subset(perm[cfg.cloud_val:])
    cloud_train = cloud_pool.take(cfg.cloud_train_limit, seed + 1)

    digits = ImageSet(digits.x, digits.y + cfg.device_label_offset)
    test_idx, val_idx, pool_by_class = [], [], {}
    for c in range(device_classes):
        idx = torch.nonzero(digits.y == c + cfg.device_label_offset).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(len(idx) * cfg.device_test_fraction))
        n_val = int(round(len(idx) * cfg.device_val_fraction))
        test_idx.append(idx[:n_test])
        val_idx.append(idx[n_test:n_test + n_val])
        pool_by_class[c] = idx[n_test + n_val:]

    assignment = device_class_assignment(cfg.num_devices, cfg.classes_per_device, device_classes)
    holders = {c: [k for k, cls in enumerate(assignment) if c in cls] for c in range(device_classes)}
    per_device: list[list[torch.Tensor]] = [[] for _ in range(cfg.num_devices)]
    for c, idx in pool_by_class.items():
        for j, k in enumerate(holders[c]):
            per_device[k].append(idx[j:: len(holders[c])])

    overlap_perm = torch.randperm(len(cloud_pool), generator=g)
    devices = []
    for k in range(cfg.num_devices):
        own = digits.subset(torch.cat(per_device[k])).take(cfg.device_train_per_device, seed + 100 + k)
        lo = k * cfg.overlap_per_device
        overlap = cloud_pool.subset(overlap_perm[lo: lo + cfg.overlap_per_device])
        devices.append(ImageSet.concat(own, overlap))

    device_test = digits.subset(torch.cat(test_idx))
    return Scenario(
        num_classes=device_classes + cfg.device_label_offset,
        cloud_train=cloud_train,
        cloud_val=cloud_val.take(cfg.test_limit, seed + 2),
        cloud_test=fashion_test.take(cfg.test_limit, seed + 3),
        devices=devices,
        device_val=digits.subset(torch.cat(val_idx)).take(cfg.test_limit, seed + 4),
        device_test=device_test.take(cfg.test_limit, seed + 5),
        device_classes=[[c + cfg.device_label_offset for c in cls] for cls in assignment],
    )
