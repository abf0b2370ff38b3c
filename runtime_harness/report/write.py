"""A profile folder on disk: results.json (the data model, results.py) and report.html (its view,
html.py), written together and atomically. Kept apart from both so the data model never imports
a view."""
from __future__ import annotations

from pathlib import Path

from dcl_core.outputs import atomic_output
from runtime_harness.report.html import html_report
from runtime_harness.report.results import REPORT_FILE, RESULTS_FILE, ProfileResults

PROFILE = "profile"  # the output kind of a profile folder


def write_outputs(results: ProfileResults, out_dir: str | Path, force: bool = False,
                  containers: tuple[str | Path, ...] = ()) -> tuple[Path, Path]:
    """results.json and report.html as one new folder `out_dir` (also used to save partial
    results), written atomically; it replaces only a previous dcl profile, with `force`."""
    with atomic_output(out_dir, PROFILE, force, containers=containers) as tmp:
        results.write(tmp / RESULTS_FILE)
        (tmp / REPORT_FILE).write_text(html_report(results))
    out = Path(out_dir)
    return out / RESULTS_FILE, out / REPORT_FILE


__all__ = ["PROFILE", "write_outputs"]
