"""Device-cloud methods as plug-ins: each folder implements `toolkit.plugin.Method` and has
one line in `toolkit.registry`."""
