"""report.html: the run as a self-contained page (summary table, inline SVG plots, how each number
was obtained), rendered from templates/ by Jinja2 with autoescaping, so artifact names, error
messages and tool output can never inject markup.

This module lays the plots out (svg.py shapes); templates/plot.svg.j2 writes them as SVG and
templates/report.html.j2 writes the page around them.
"""
from __future__ import annotations

import math
from functools import cache
from typing import TYPE_CHECKING

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from runtime_harness.report.labels import MIB, energy_cell, format_color, format_display, mib, ms
from runtime_harness.report.svg import (
    LABEL_W,
    ROW_H,
    TOP,
    WIDTH,
    Circle,
    Line,
    Plot,
    Polyline,
    Rect,
    Scale,
    Shape,
    Text,
    framed,
    nice,
    num,
    row_label,
)

if TYPE_CHECKING:  # annotations only: the data model never depends on its view
    from runtime_harness.report.results import ArtifactResult, ProfileResults

STRIP_RUNS = 800  # runs drawn as dots per artifact; more only blur the strip
DRIFT_PLOT_H = 220  # pixels of the sustained-run plot area


def _px(v: float) -> str:
    """Pixel coordinates to one decimal, without a trailing '.0'."""
    return f"{v:.1f}".removesuffix(".0")


@cache
def _env() -> Environment:
    env = Environment(loader=PackageLoader("runtime_harness.report", "templates"),
                      autoescape=select_autoescape(enabled_extensions=("html.j2", "svg.j2"), default=True),
                      undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters.update(px=_px, ms=ms, mib=mib, energy_cell=energy_cell, display=format_display)
    return env


def _svg(plot: Plot) -> str:
    """One plot through the template's `svg` macro (the same macro the page uses)."""
    return str(_env().get_template("plot.svg.j2").module.svg(plot))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Plot layouts

def _latency_plot(arts: list[ArtifactResult], title: str) -> Plot:
    rows = [a for a in arts if a.latency is not None]
    vals = [v * 1e3 for a in rows for v in (a.samples_s or [a.latency.min_s or a.latency.mean_s,  # type: ignore[union-attr]
                                                         a.latency.max_s or a.latency.mean_s])]  # type: ignore[union-attr]
    if not vals:
        vals = [1.0]
    lo, hi = min(vals), max(vals)
    scale = Scale(lo, hi, LABEL_W, WIDTH - 30, log=lo > 0 and hi / lo > 50)
    body: list[Shape] = []
    for i, a in enumerate(rows):
        L, c = a.latency, format_color(a.format)
        assert L is not None
        yc = TOP + i * ROW_H + ROW_H / 2
        body += row_label(i, f"{a.name} · {a.format} ({a.kind})", c)
        s = sorted(v * 1e3 for v in a.samples_s)
        if s:
            q1, q3 = s[len(s) // 4], s[(3 * len(s)) // 4]
            for j, v in enumerate(a.samples_s[:STRIP_RUNS]):  # deterministic jitter: no randomness in reports
                body.append(Circle(scale(v * 1e3), yc + ((j * 7919) % 17 - 8) * 0.9, 1.6, c, opacity=0.35))
            body.append(Line(scale(s[0]), yc, scale(s[-1]), yc, "#333"))
            body.append(Rect(scale(q1), yc - 8, max(scale(q3) - scale(q1), 1.5), 16, c, opacity=0.45, stroke="#333"))
        elif L.min_s is not None and L.max_s is not None:
            body.append(Line(scale(L.min_s * 1e3), yc, scale(L.max_s * 1e3), yc, "#333", dash="3,2"))
        if L.p50_s is not None:
            x = scale(L.p50_s * 1e3)
            body.append(Line(x, yc - 9, x, yc + 9, "#000", width=2))
        if L.p99_s is not None:
            x = scale(L.p99_s * 1e3)
            body.append(Line(x, yc - 6, x, yc + 6, "#d62728", width=2))
        body.append(Circle(scale(L.mean_s * 1e3), yc, 3.5, "#fff", stroke="#000"))
    body.append(Text(WIDTH - 30, 22, "box: quartiles, black: p50, red: p99, ring: mean, dots: runs, dashed: min..max "
                                     "(tool summary)", 11, "#555", anchor="end"))
    return framed(title, len(rows), scale, "milliseconds per inference / training step", body)


def _bars_plot(title: str, items: list[tuple[str, str, float | None, str]], unit: str) -> Plot:
    present = [v for _, _, v, _ in items if v is not None and v > 0]
    scale = Scale(min(present, default=1.0), max(present, default=1.0), LABEL_W, WIDTH - 250, log=False)
    body: list[Shape] = []
    for i, (label, fmt, v, note) in enumerate(items):
        c = format_color(fmt)
        y = TOP + i * ROW_H + 7
        body += row_label(i, label, c)
        if v is not None:
            body.append(Rect(LABEL_W, y, max(scale(v) - LABEL_W, 1), ROW_H - 14, c))
            body.append(Text(scale(v) + 6, y + 14, f"{num(v)} {note}", 11, "#222"))
        else:
            body.append(Rect(LABEL_W, y, 40, ROW_H - 14, "#dddddd", stroke="#999", dash="3,2"))
            body.append(Text(LABEL_W + 46, y + 14, note[:90], 11, "#a33"))
    return framed(title, len(items), scale, unit, body)


def _drift_plot(arts: list[ArtifactResult]) -> Plot:
    rows = [a for a in arts if a.drift and a.drift.windows]
    ts = [w[0] for a in rows for w in a.drift.windows]  # type: ignore[union-attr]
    lat_ms = [w[1] * 1e3 for a in rows for w in a.drift.windows]  # type: ignore[union-attr]
    scale = Scale(1.0, max(ts, default=1.0) or 1.0, 70, WIDTH - 30, log=False)
    ymax = nice(max(lat_ms, default=1.0))

    def y_of(v_ms: float) -> float:
        return TOP + DRIFT_PLOT_H * (1 - v_ms / ymax)

    body: list[Shape] = []
    for a in rows:
        windows = a.drift.windows  # type: ignore[union-attr]
        body.append(Polyline([(scale(w[0]), y_of(w[1] * 1e3)) for w in windows], format_color(a.format), 2))
    for k in range(5):
        v = ymax * k / 4
        body.append(Text(64, y_of(v) + 4, num(v), 11, "#555", anchor="end"))
    for i, a in enumerate(rows):
        d = a.drift
        assert d is not None
        ratio = "n/a" if d.ratio is None else f"{d.ratio:.2f}x"
        body.append(Text(WIDTH - 30, TOP + 14 + 14 * i, f"{a.name}: last/first window {ratio}"
                         f"{' (throttling?)' if d.throttling_suspected else ''}", 11, format_color(a.format),
                         anchor="end"))
    n_rows = math.ceil(DRIFT_PLOT_H / ROW_H)
    return framed("Sustained run: median latency (ms) per window", n_rows, scale, "seconds since start", body)


def _figures(results: ProfileResults) -> list[Plot]:
    """Every plot of the report: latency, memory, energy, then training steps and sustained-run
    drift when the run has them. Failed artifacts have no numbers to plot."""
    arts = [a for a in results.artifacts if not a.error]
    out = [_latency_plot(arts, "Latency distribution per artifact")]
    mem: list[tuple[str, str, float | None, str]] = []
    for a in arts:
        rss = a.peak_rss
        mem.append((f"{a.name} · {a.format} · peak RSS", a.format, rss.value / MIB if rss.value is not None else None,
                    f"MiB [{rss.source}]" if rss.value is not None else f"unavailable: {rss.reason}"))
        mem.append((f"{a.name} · {a.format} · file", a.format, a.bytes / MIB, "MiB [file size]"))
    out.append(_bars_plot("Memory: peak RSS and artifact size", mem, "MiB"))
    out.append(_bars_plot("Energy per inference / training step", [
        (f"{a.name} · {a.format} ({a.kind})", a.format, a.energy.value * 1e3 if a.energy.value is not None else None,
         f"mJ [{', '.join([a.energy.source, *a.energy.flags])}]" if a.energy.value is not None
         else f"unavailable: {a.energy.reason}") for a in arts], "millijoules"))
    train = [a for a in arts if a.kind == "training" and a.latency is not None]
    if train:
        out.append(_bars_plot("Training: time per step", [
            (f"{a.name} · {a.format}", a.format, a.latency.mean_s * 1e3,  # type: ignore[union-attr]
             f"ms/step; {a.per_sample_s * 1e3:.3g} ms/sample (batch {a.batch_size})" if a.per_sample_s else "ms/step")
            for a in train], "milliseconds per training step"))
    if any(a.drift and a.drift.windows for a in arts):
        out.append(_drift_plot(arts))
    return out


# ---------------------------------------------------------------------------------------------
# Public: the plots as <svg> strings, and the page

def plots(results: ProfileResults) -> list[str]:
    """Every plot of the report as an SVG string (one <svg> each)."""
    return [_svg(p) for p in _figures(results)]


def html_report(results: ProfileResults) -> str:
    """The whole page as one string (written as report.html next to results.json)."""
    return _env().get_template("report.html.j2").render(results=results, plots=_figures(results))
