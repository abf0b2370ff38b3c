"""Device-cloud methods as plug-ins: each folder implements `toolkit.methods.base.Method` and has
one line in `toolkit.methods.registry`."""
