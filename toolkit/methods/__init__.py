"""The three device-cloud methods. Each is a config dataclass + train() + evaluate()."""
