"""dcl toolkit: the cloud side (data, models, the three methods, training loops, run directories)."""

__version__ = "0.1.0"
