"""CoDA: cloud-coordinated data augmentation for on-device recommendation (arXiv 2201.10382)."""
