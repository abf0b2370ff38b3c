"""ICIIA: intra-client and inter-image attention (arXiv 2211.06276, ACML 2024)."""
