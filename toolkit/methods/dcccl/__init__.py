"""DC-CCL: device-cloud collaborative controlled learning (arXiv 2303.10361)."""
