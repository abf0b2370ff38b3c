"""Runtime harness: load exported artifacts in their real runtimes, run, measure, report."""
