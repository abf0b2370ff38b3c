"""The table `dcl profile` prints: one row per artifact, one column per metric."""
from __future__ import annotations

from tabulate import tabulate

from runtime_harness.report.labels import MIB, energy_cell, format_display, mib, ms
from runtime_harness.report.results import ArtifactResult, ProfileResults

HEADERS = ["artifact", "format", "kind", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "load ms", "ms/sample",
           "peak RSS MiB", "size MiB", "energy mJ [source]"]
_IDENTITY = 3  # artifact, format, kind: shown for failed rows too


def _row(a: ArtifactResult) -> list[str]:
    head = [a.name, format_display(a.format), a.kind]
    if a.error:
        # The reason fills the first metric column and the rest stay empty, so the row keeps the
        # table's column count and every later column still lines up under its header.
        return head + [f"failed: {a.error}"] + [""] * (len(HEADERS) - _IDENTITY - 1)
    L = a.latency
    latency = ([ms(L.p50_s), ms(L.p90_s), ms(L.p99_s), f"{ms(L.mean_s)} ± {ms(L.std_s, 2)}"] if L
               else ["-"] * 4)
    return head + latency + [ms(a.load_s), ms(a.per_sample_s), mib(a.peak_rss), f"{a.bytes / MIB:.2f}",
                             energy_cell(a.energy)]


def console_table(results: ProfileResults) -> str:
    """The device line (and a PARTIAL warning when the run stopped early) above the metrics table."""
    d = results.device
    head = f"{d.describe()}  serial {d.serial}"
    if results.partial:
        head += f"\nPARTIAL RESULTS: {results.partial_reason}"
    table = tabulate([_row(a) for a in results.artifacts], headers=HEADERS, tablefmt="github")
    return head + "\n\n" + table
