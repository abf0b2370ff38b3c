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


EMULATED_HEADERS = ["artifact", "format", "kind", "runtime", "parity", "vs", "max |diff| / rel err",
                    "instructions per call", "repeat spread", "size MiB"]


def _emulated_row(a: ArtifactResult, note: int | None) -> list[str]:
    """An emulated device's row: what was checked and counted, not timings (they are the emulator's)."""
    head = [a.name, format_display(a.format), a.kind]
    if a.error:
        return head + [f"failed [{note}]"] + [""] * (len(EMULATED_HEADERS) - _IDENTITY - 1)
    p, n = a.parity, a.instructions
    if p is None:
        check = ["-", "-", "-"]
    else:
        diff = (f"{p.max_abs_diff:.2g}" if a.kind == "inference" and p.max_abs_diff is not None else
                f"loss {p.max_rel_loss_diff:.2g}, weights {p.max_rel_weight_diff:.2g}"
                if p.max_rel_loss_diff is not None and p.max_rel_weight_diff is not None else "-")
        check = ["passed" if p.passed else f"FAILED: {p.reason}", p.reference, diff]
    count = [f"{n.count:,}", f"{100 * n.spread:.3f}%"] if n else ["-", "-"]
    return head + [a.runtime] + check + count + [f"{a.bytes / MIB:.2f}"]


def console_table(results: ProfileResults) -> str:
    """The device line (and a PARTIAL warning when the run stopped early) above the metrics table;
    on an emulated device, parity and instruction counts instead of timings."""
    d = results.device
    head = f"{d.describe()}  serial {d.serial}"
    if results.partial:
        head += f"\nPARTIAL RESULTS: {results.partial_reason}"
    failed = [a for a in results.artifacts if a.error]
    notes = {id(a): i for i, a in enumerate(failed, 1)}
    emulated = any(a.provenance.startswith("emulated") for a in results.artifacts)
    row, headers = (_emulated_row, EMULATED_HEADERS) if emulated else (_row, HEADERS)
    table = tabulate([row(a, notes.get(id(a))) for a in results.artifacts], headers=headers, tablefmt="github")
    if emulated:
        head += f"\n{results.artifacts[0].provenance}: numbers from an emulator, not a phone's"
    reasons = "".join(f"\n[{notes[id(a)]}] {a.name}: {a.error}" for a in failed)
    return head + "\n\n" + table + ("\n" + reasons if reasons else "")
