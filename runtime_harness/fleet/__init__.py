"""Fleet simulation: many devices' training steps run inside the exported artifacts."""
