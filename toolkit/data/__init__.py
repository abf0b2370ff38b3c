"""Offline datasets and the seeded client/device splits built from them."""
from toolkit.data.imageset import ImageSet
from toolkit.data.sources import load_fashion_mnist, load_mnist_digits

__all__ = ["ImageSet", "load_fashion_mnist", "load_mnist_digits"]
