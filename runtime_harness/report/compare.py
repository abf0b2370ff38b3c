"""Two runs side by side (`dcl profile --compare a.json b.json`): per artifact and metric, both
values and their ratio B / A, with a note where the two numbers come from different sources."""
from __future__ import annotations

from typing import Any

from tabulate import tabulate

from runtime_harness.report.labels import MIB, format_display
from runtime_harness.report.results import ArtifactResult, ProfileResults


def _metrics_of(a: ArtifactResult) -> list[tuple[str, float | None, str]]:
    """(metric, value in display units, source) for the comparison table."""
    L = a.latency

    def to_ms(v: float | None) -> float | None:
        return None if v is None else v * 1e3

    src = L.source if L else ""
    out = [("p50 ms", to_ms(L.p50_s) if L else None, src), ("p90 ms", to_ms(L.p90_s) if L else None, src),
           ("p99 ms", to_ms(L.p99_s) if L else None, src), ("mean ms", to_ms(L.mean_s) if L else None, src)]
    if a.kind == "training":
        out.append(("ms/sample", to_ms(a.per_sample_s), src))
    out.append(("peak RSS MiB", a.peak_rss.value / MIB if a.peak_rss.value is not None else None, a.peak_rss.source))
    out.append(("energy mJ", a.energy.value * 1e3 if a.energy.value is not None else None, a.energy.source))
    return out


def compare_rows(a: ProfileResults, b: ProfileResults) -> list[dict[str, Any]]:
    """One row per (artifact, metric) in both runs, matched by artifact name and format; ratio is
    B / A, and a note says when the two numbers come from different sources."""
    rows = []
    bmap = {(x.name, x.format): x for x in b.artifacts}
    for x in a.artifacts:
        y = bmap.get((x.name, x.format))
        if y is None or x.error or y.error:
            continue
        for (metric, va, sa), (_, vb, sb) in zip(_metrics_of(x), _metrics_of(y)):
            if va is None and vb is None:
                continue
            ratio = vb / va if va and vb is not None else None
            note = f"sources differ: {sa} vs {sb}" if sa != sb else ""
            rows.append({"artifact": x.name, "format": x.format, "metric": metric, "a": va, "b": vb, "ratio": ratio,
                         "note": note})
    return rows


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def compare_table(a: ProfileResults, b: ProfileResults) -> str:
    """Two runs side by side; ratio = B / A (below 1: B is faster / smaller / cheaper)."""
    rows = compare_rows(a, b)
    only_a = sorted({x.name for x in a.artifacts} - {x.name for x in b.artifacts})
    only_b = sorted({x.name for x in b.artifacts} - {x.name for x in a.artifacts})
    table = tabulate([[r["artifact"], format_display(r["format"]), r["metric"], _num(r["a"]), _num(r["b"]),
                       "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["note"]] for r in rows],
                     headers=["artifact", "format", "metric", "A", "B", "B/A", ""], tablefmt="github")
    lines = [f"A: {a.device.describe()} ({a.created})", f"B: {b.device.describe()} ({b.created})"]
    for r, tag in ((a, "A"), (b, "B")):
        if r.partial:
            lines.append(f"{tag} is PARTIAL: {r.partial_reason}")
    lines += ["", table]
    if only_a or only_b:
        lines.append("")
        lines += [f"only in A: {', '.join(only_a)}"] if only_a else []
        lines += [f"only in B: {', '.join(only_b)}"] if only_b else []
    return "\n".join(lines)
