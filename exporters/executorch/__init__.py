"""ExecuTorch: `.pte` inference (XNNPACK) and joint forward/backward training programs, and their runners."""
