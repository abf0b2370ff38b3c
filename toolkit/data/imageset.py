"""An in-memory labelled image set: small enough (<= 70k 28x28 images) to keep as two tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageSet:
    """Images as float32 (N, 1, H, W) in [0, 1] and int64 labels in the joint label space."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        assert self.x.shape[0] == self.y.shape[0], "images and labels differ in length"

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.x[index], self.y[index])

    def take(self, n: int, seed: int) -> "ImageSet":
        """A seeded random subset of at most n samples (all of them when n <= 0 or n >= len)."""
        if n <= 0 or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        return self.subset(torch.randperm(len(self), generator=g)[:n])

    @staticmethod
    def concat(*sets: "ImageSet") -> "ImageSet":
        return ImageSet(torch.cat([s.x for s in sets]), torch.cat([s.y for s in sets]))

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.y, minlength=num_classes).tolist()
