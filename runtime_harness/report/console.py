"""The table `dcl profile` prints: one row per artifact, one column per metric."""
from __future__ import annotations

from tabulate import tabulate

from runtime_harness.report.labels import MIB, energy_cell, format_display, mib, ms
from runtime_harness.report.results import ArtifactResult, ProfileResults

HEADERS = ["artifact", "format", "kind", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "load ms", "ms/sample",
           "peak RSS MiB", "size MiB", "energy mJ [source]"]
_IDENTITY = 3  # artifact, format, kind: shown for failed rows too


def _row(a: ArtifactResult, note: int | None) -> list[str]:
    head = [a.name, format_display(a.format), a.kind]
    if a.error:
        # A short status keeps the p50 column narrow; the reason is printed below the table.
        return head + [f"failed [{note}]"] + [""] * (len(HEADERS) - _IDENTITY - 1)
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
    failed = [a for a in results.artifacts if a.error]
    notes = {id(a): i for i, a in enumerate(failed, 1)}
    table = tabulate([_row(a, notes.get(id(a))) for a in results.artifacts], headers=HEADERS, tablefmt="github")
    reasons = "".join(f"\n[{notes[id(a)]}] {a.name}: {a.error}" for a in failed)
    return head + "\n\n" + table + ("\n" + reasons if reasons else "")
