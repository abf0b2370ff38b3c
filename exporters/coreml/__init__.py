"""Core ML: `.mlpackage` inference and updatable `.mlmodel` training, structure-validated off macOS."""
