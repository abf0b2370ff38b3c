"""What `dcl profile` writes: results.json (typed, strict to read back), a console table, a
self-contained HTML report with inline SVG plots, and a side-by-side comparison of two runs.

The HTML has no JavaScript, CSS or fonts from anywhere else: it must open from a file on a
laptop with no network and still show every plot.
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from tabulate import tabulate

from runtime_harness.devices.base import DeviceInfo
from runtime_harness.metrics import FILE_SIZE, Drift, LatencyStats, Measurement, Profile
from toolkit.errors import DclError

FORMAT_VERSION = 1
MAX_STORED_SAMPLES = 5000  # statistics use every run; results.json keeps at most this many for plots


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _not_measured(unit: str) -> Measurement:
    return Measurement.unavailable(unit, "not measured")


@dataclass
class ArtifactResult:
    name: str
    format: str
    kind: Literal["inference", "training"]
    sha256: str
    bytes: int
    threads: int = 1
    runtime: str = ""  # what ran it: "onnxruntime (python)", "benchmark_model", ...
    latency: LatencyStats | None = None  # per inference, or per training step
    load_s: float | None = None
    first_s: float | None = None
    warmup: LatencyStats | None = None
    batch_size: int | None = None
    per_sample_s: float | None = None  # training: step time / batch size
    peak_rss: Measurement = field(default_factory=lambda: _not_measured("bytes"))
    file_size: Measurement = field(default_factory=lambda: _not_measured("bytes"))
    energy: Measurement = field(default_factory=lambda: _not_measured("J"))  # per inference / per step
    drift: Drift | None = None
    samples_s: list[float] = field(default_factory=list)
    error: str = ""  # this artifact failed: the one-line reason (its numbers are absent)

    @property
    def per(self) -> str:
        return "training step" if self.kind == "training" else "inference"

    @staticmethod
    def _size(nbytes: int) -> Measurement:
        return Measurement(float(nbytes), "bytes", FILE_SIZE)

    @classmethod
    def from_profile(cls, name: str, fmt: str, kind: str, sha256: str, nbytes: int, profile: Profile,
                     peak_rss: Measurement, threads: int = 1, runtime: str = "") -> "ArtifactResult":
        """A host run: metrics.profile_inference / profile_training + host.peak_rss_of_artifact."""
        t = profile.timing
        return cls(name=name, format=fmt, kind=kind, sha256=sha256, bytes=nbytes, threads=threads,  # type: ignore[arg-type]
                   runtime=runtime or f"{fmt} (python bindings)", latency=t.runs, load_s=t.load_s, first_s=t.first_s,
                   warmup=t.warmup, batch_size=profile.batch_size, per_sample_s=profile.per_sample_s,
                   peak_rss=peak_rss, file_size=cls._size(nbytes), energy=profile.energy, drift=profile.drift,
                   samples_s=_thin(t.samples_s))

    @classmethod
    def from_android(cls, name: str, fmt: str, sha256: str, nbytes: int, run: Any, threads: int = 1) -> "ArtifactResult":
        """An adb run: devices.adb.AdbDevice.benchmark(...) -> AndroidRun."""
        t = run.timings
        return cls(name=name, format=fmt, kind="inference", sha256=sha256, bytes=nbytes, threads=threads,
                   runtime=run.tool, latency=run.latency, load_s=t.init_s, first_s=t.first_s,
                   warmup=(LatencyStats(n=0, mean_s=t.warmup_mean_s, source=run.latency.source,
                                        note=f"warm-up average printed by {run.tool}")
                           if t.warmup_mean_s is not None else None),
                   peak_rss=run.peak_rss, file_size=cls._size(nbytes), energy=run.energy, samples_s=_thin(t.samples_s))

    @classmethod
    def failed(cls, name: str, fmt: str, kind: str, sha256: str, nbytes: int, error: str) -> "ArtifactResult":
        return cls(name=name, format=fmt, kind=kind, sha256=sha256, bytes=nbytes, error=error,  # type: ignore[arg-type]
                   file_size=cls._size(nbytes))


def _thin(samples: list[float]) -> list[float]:
    if len(samples) <= MAX_STORED_SAMPLES:
        return list(samples)
    step = len(samples) / MAX_STORED_SAMPLES
    return [samples[int(i * step)] for i in range(MAX_STORED_SAMPLES)]


@dataclass
class ProfileResults:
    device: DeviceInfo
    artifacts: list[ArtifactResult] = field(default_factory=list)
    tool_versions: dict[str, str] = field(default_factory=dict)
    target: str = ""
    bundle: str = ""
    created: str = field(default_factory=_now)
    partial: bool = False  # the run stopped early (e.g. the device disconnected): not every artifact ran
    partial_reason: str = ""
    format_version: int = FORMAT_VERSION

    def mark_partial(self, reason: str) -> None:
        self.partial, self.partial_reason = True, reason

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        head = {k: d.pop(k) for k in ("format_version", "created", "partial", "partial_reason", "target", "bundle",
                                      "device", "tool_versions")}
        return {**head, **d}

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")  # a crash mid-write never leaves half a results.json
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(p)
        return p


def load_results(path: str | Path) -> ProfileResults:
    """Read a results.json strictly (unknown keys or unlabelled numbers are refused)."""
    from toolkit.config import from_dict

    p = Path(path)
    if not p.is_file():
        raise DclError(f"{p} does not exist; pass a results.json written by `dcl profile`")
    try:
        raw = json.loads(p.read_text())
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {raw.get('format_version')!r}, this dcl reads {FORMAT_VERSION}")
        return from_dict(ProfileResults, raw, where=p.name)
    except Exception as e:  # noqa: BLE001 - any parse problem is the same user error
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DclError(f"{p} is not a readable dcl results.json ({msg}); re-run `dcl profile`") from None


def write_outputs(results: ProfileResults, out_dir: str | Path) -> tuple[Path, Path]:
    """results.json and report.html into `out_dir` (also used to save partial results)."""
    out = Path(out_dir)
    j = results.write(out / "results.json")
    h = out / "report.html"
    h.write_text(html_report(results))
    return j, h


# ---------------------------------------------------------------------------------------------
# Console

def _ms(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x * 1e3:.{digits}g}"


def _mib(m: Measurement) -> str:
    return "-" if m.value is None else f"{m.value / 2**20:.2f}"


def _energy_cell(m: Measurement) -> str:
    if m.value is None:
        return f"unavailable: {m.reason}"
    return f"{m.value * 1e3:.3g} [{', '.join([m.source, *m.flags])}]"


def console_table(results: ProfileResults) -> str:
    d = results.device
    head = f"{d.describe()}  serial {d.serial}"
    if results.partial:
        head += f"\nPARTIAL RESULTS: {results.partial_reason}"
    rows = []
    for a in results.artifacts:
        if a.error:
            rows.append([a.name, a.format, a.kind, f"failed: {a.error}"] + [""] * 8)
            continue
        L = a.latency
        rows.append([a.name, a.format, a.kind, _ms(L.p50_s) if L else "-", _ms(L.p90_s) if L else "-",
                     _ms(L.p99_s) if L else "-",
                     (f"{_ms(L.mean_s)} ± {_ms(L.std_s, 2)}" if L else "-"), _ms(a.load_s), _ms(a.per_sample_s),
                     _mib(a.peak_rss), f"{a.bytes / 2**20:.2f}", _energy_cell(a.energy)])
    table = tabulate(rows, headers=["artifact", "format", "kind", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms",
                                    "load ms", "ms/sample", "peak RSS MiB", "size MiB", "energy mJ [source]"],
                     tablefmt="github")
    return head + "\n\n" + table


# ---------------------------------------------------------------------------------------------
# Comparison of two runs (`dcl profile --compare a.json b.json`)

def _metrics_of(a: ArtifactResult) -> list[tuple[str, float | None, str]]:
    """(metric, value in display units, source) for the comparison table."""
    L = a.latency

    def ms(v: float | None) -> float | None:
        return None if v is None else v * 1e3

    src = L.source if L else ""
    out = [("p50 ms", ms(L.p50_s) if L else None, src), ("p90 ms", ms(L.p90_s) if L else None, src),
           ("p99 ms", ms(L.p99_s) if L else None, src), ("mean ms", ms(L.mean_s) if L else None, src)]
    if a.kind == "training":
        out.append(("ms/sample", ms(a.per_sample_s), src))
    out.append(("peak RSS MiB", a.peak_rss.value / 2**20 if a.peak_rss.value is not None else None, a.peak_rss.source))
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


def compare(a: ProfileResults, b: ProfileResults) -> str:
    """Two runs side by side; ratio = B / A (below 1: B is faster / smaller / cheaper)."""
    rows = compare_rows(a, b)
    only_a = sorted({x.name for x in a.artifacts} - {x.name for x in b.artifacts})
    only_b = sorted({x.name for x in b.artifacts} - {x.name for x in a.artifacts})

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4g}"

    table = tabulate([[r["artifact"], r["format"], r["metric"], f(r["a"]), f(r["b"]),
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


# ---------------------------------------------------------------------------------------------
# HTML with inline SVG

COLORS = {"executorch": "#1f77b4", "onnx": "#ff7f0e", "tflite": "#2ca02c", "coreml": "#9467bd",
          "pytorch": "#8c564b"}
_W, _LABEL_W, _ROW_H, _TOP, _BOTTOM = 1040, 320, 34, 36, 44


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _color(fmt: str) -> str:
    return COLORS.get(fmt, "#7f7f7f")


class _Scale:
    """Value -> x pixel, linear from 0 or log10 when values span orders of magnitude."""

    def __init__(self, lo: float, hi: float, x0: float, x1: float, log: bool):
        self.log = log and lo > 0
        self.x0, self.x1 = x0, x1
        if self.log:
            self.lo, self.hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
        else:
            self.lo, self.hi = 0.0, _nice(hi if hi > 0 else 1.0)

    def __call__(self, v: float) -> float:
        if self.log:
            v = max(v, self.lo)
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / (self.hi - self.lo)
        return self.x0 + f * (self.x1 - self.x0)

    def ticks(self) -> list[float]:
        if self.log:
            return [10.0 ** e for e in range(round(math.log10(self.lo)), round(math.log10(self.hi)) + 1)]
        return [self.hi * i / 5 for i in range(6)]


def _nice(v: float) -> float:
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _svg_frame(title: str, n_rows: int, scale: _Scale, unit: str, body: list[str]) -> str:
    h = _TOP + n_rows * _ROW_H + _BOTTOM
    axis_y = _TOP + n_rows * _ROW_H + 4
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{_W}" height="{h}" '
             f'viewBox="0 0 {_W} {h}" class="plot"><title>{_e(title)}</title>',
             f'<rect x="0" y="0" width="{_W}" height="{h}" fill="#ffffff"/>',
             f'<text x="8" y="22" font-size="15" font-weight="bold" fill="#222">{_e(title)}</text>']
    for t in scale.ticks():
        x = scale(t)
        parts.append(f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{axis_y}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 16}" font-size="11" text-anchor="middle" fill="#555">'
                     f'{_e(_fmt(t))}</text>')
    parts.append(f'<text x="{(scale.x0 + scale.x1) / 2:.1f}" y="{axis_y + 34}" font-size="12" text-anchor="middle" '
                 f'fill="#333">{_e(unit)}{" (log scale)" if scale.log else ""}</text>')
    parts += body
    parts.append("</svg>")
    return "\n".join(parts)


def _row_label(i: int, text: str, color: str) -> str:
    y = _TOP + i * _ROW_H + _ROW_H / 2 + 4
    return (f'<rect x="8" y="{y - 10:.1f}" width="10" height="10" fill="{color}"/>'
            f'<text x="24" y="{y:.1f}" font-size="12" fill="#222">{_e(text if len(text) <= 46 else text[:45] + "…")}'
            f'</text>')


def svg_latency(arts: list[ArtifactResult], title: str = "Latency distribution per artifact") -> str:
    """Box (quartiles from the runs; whiskers min..max; tick at p99) and a jittered strip of runs.
    Tool summaries without per-run times show min..max, a mean dot and the percentiles they have."""
    rows = [a for a in arts if a.latency is not None]
    vals = [v * 1e3 for a in rows for v in (a.samples_s or [a.latency.min_s or a.latency.mean_s,  # type: ignore[union-attr]
                                                         a.latency.max_s or a.latency.mean_s])]  # type: ignore[union-attr]
    if not vals:
        vals = [1.0]
    lo, hi = min(vals), max(vals)
    scale = _Scale(lo, hi, _LABEL_W, _W - 30, log=lo > 0 and hi / lo > 50)
    body = []
    for i, a in enumerate(rows):
        L, c = a.latency, _color(a.format)
        assert L is not None
        yc = _TOP + i * _ROW_H + _ROW_H / 2
        body.append(_row_label(i, f"{a.name} · {a.format} ({a.kind})", c))
        s = sorted(v * 1e3 for v in a.samples_s)
        if s:
            q1, q3 = s[len(s) // 4], s[(3 * len(s)) // 4]
            for j, v in enumerate(a.samples_s[:800]):  # strip: deterministic jitter, no randomness in reports
                jy = yc + ((j * 7919) % 17 - 8) * 0.9
                body.append(f'<circle cx="{scale(v * 1e3):.1f}" cy="{jy:.1f}" r="1.6" fill="{c}" fill-opacity="0.35"/>')
            body.append(f'<line x1="{scale(s[0]):.1f}" y1="{yc}" x2="{scale(s[-1]):.1f}" y2="{yc}" stroke="#333"/>')
            body.append(f'<rect x="{scale(q1):.1f}" y="{yc - 8}" width="{max(scale(q3) - scale(q1), 1.5):.1f}" '
                        f'height="16" fill="{c}" fill-opacity="0.45" stroke="#333"/>')
        elif L.min_s is not None and L.max_s is not None:
            body.append(f'<line x1="{scale(L.min_s * 1e3):.1f}" y1="{yc}" x2="{scale(L.max_s * 1e3):.1f}" y2="{yc}" '
                        f'stroke="#333" stroke-dasharray="3,2"/>')
        if L.p50_s is not None:
            x = scale(L.p50_s * 1e3)
            body.append(f'<line x1="{x:.1f}" y1="{yc - 9}" x2="{x:.1f}" y2="{yc + 9}" stroke="#000" stroke-width="2"/>')
        if L.p99_s is not None:
            x = scale(L.p99_s * 1e3)
            body.append(f'<line x1="{x:.1f}" y1="{yc - 6}" x2="{x:.1f}" y2="{yc + 6}" stroke="#d62728" stroke-width="2"/>')
        body.append(f'<circle cx="{scale(L.mean_s * 1e3):.1f}" cy="{yc}" r="3.5" fill="#fff" stroke="#000"/>')
    body.append(f'<text x="{_W - 30}" y="22" font-size="11" text-anchor="end" fill="#555">box: quartiles, '
                f'black: p50, red: p99, ring: mean, dots: runs, dashed: min..max (tool summary)</text>')
    return _svg_frame(title, len(rows), scale, "milliseconds per inference / training step", body)


def svg_bars(title: str, items: list[tuple[str, str, float | None, str]], unit: str) -> str:
    """Horizontal bars: (label, format, value or None, annotation). None draws no bar, only the
    annotation (used for `unavailable` energy, with its reason)."""
    present = [v for _, _, v, _ in items if v is not None and v > 0]
    scale = _Scale(min(present, default=1.0), max(present, default=1.0), _LABEL_W, _W - 250, log=False)
    body = []
    for i, (label, fmt, v, note) in enumerate(items):
        c = _color(fmt)
        y = _TOP + i * _ROW_H + 7
        body.append(_row_label(i, label, c))
        if v is not None:
            body.append(f'<rect x="{_LABEL_W}" y="{y}" width="{max(scale(v) - _LABEL_W, 1):.1f}" height="{_ROW_H - 14}" '
                        f'fill="{c}"/>')
            tx = scale(v) + 6
            body.append(f'<text x="{tx:.1f}" y="{y + 14}" font-size="11" fill="#222">{_e(_fmt(v))} {_e(note)}</text>')
        else:
            body.append(f'<rect x="{_LABEL_W}" y="{y}" width="40" height="{_ROW_H - 14}" fill="#dddddd" '
                        f'stroke="#999" stroke-dasharray="3,2"/>')
            body.append(f'<text x="{_LABEL_W + 46}" y="{y + 14}" font-size="11" fill="#a33">{_e(note[:90])}</text>')
    return _svg_frame(title, len(items), scale, unit, body)


def svg_drift(arts: list[ArtifactResult]) -> str:
    """Sustained mode: window median latency over time, one line per artifact."""
    rows = [a for a in arts if a.drift and a.drift.windows]
    ts = [w[0] for a in rows for w in a.drift.windows]  # type: ignore[union-attr]
    ms = [w[1] * 1e3 for a in rows for w in a.drift.windows]  # type: ignore[union-attr]
    scale = _Scale(1.0, max(ts, default=1.0) or 1.0, 70, _W - 30, log=False)
    ymax = _nice(max(ms, default=1.0))
    h_plot = 220
    body = []
    for a in rows:
        windows = a.drift.windows  # type: ignore[union-attr]
        pts = " ".join(f"{scale(w[0]):.1f},{_TOP + h_plot * (1 - w[1] * 1e3 / ymax):.1f}" for w in windows)
        body.append(f'<polyline points="{pts}" fill="none" stroke="{_color(a.format)}" stroke-width="2"/>')
    for k in range(5):
        v = ymax * k / 4
        y = _TOP + h_plot * (1 - v / ymax)
        body.append(f'<text x="64" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#555">{_e(_fmt(v))}</text>')
    for i, a in enumerate(rows):
        d = a.drift
        assert d is not None
        ratio = "n/a" if d.ratio is None else f"{d.ratio:.2f}x"
        body.append(f'<text x="{_W - 30}" y="{_TOP + 14 + 14 * i}" font-size="11" text-anchor="end" '
                    f'fill="{_color(a.format)}">{_e(a.name)}: last/first window {ratio}'
                    f'{" (throttling?)" if d.throttling_suspected else ""}</text>')
    n_rows = math.ceil(h_plot / _ROW_H)
    return _svg_frame("Sustained run: median latency (ms) per window", n_rows, scale, "seconds since start", body)


def plots(results: ProfileResults) -> list[str]:
    """Every plot of the report as an SVG string (one <svg> each)."""
    arts = [a for a in results.artifacts if not a.error]
    out = [svg_latency(arts)]
    mem = []
    for a in arts:
        rss = a.peak_rss
        mem.append((f"{a.name} · {a.format} · peak RSS", a.format, rss.value / 2**20 if rss.value is not None else None,
                    f"MiB [{rss.source}]" if rss.value is not None else f"unavailable: {rss.reason}"))
        mem.append((f"{a.name} · {a.format} · file", a.format, a.bytes / 2**20, "MiB [file size]"))
    out.append(svg_bars("Memory: peak RSS and artifact size", mem, "MiB"))
    out.append(svg_bars("Energy per inference / training step", [
        (f"{a.name} · {a.format} ({a.kind})", a.format, a.energy.value * 1e3 if a.energy.value is not None else None,
         f"mJ [{', '.join([a.energy.source, *a.energy.flags])}]" if a.energy.value is not None
         else f"unavailable: {a.energy.reason}") for a in arts], "millijoules"))
    train = [a for a in arts if a.kind == "training" and a.latency is not None]
    if train:
        out.append(svg_bars("Training: time per step", [
            (f"{a.name} · {a.format}", a.format, a.latency.mean_s * 1e3,  # type: ignore[union-attr]
             f"ms/step; {a.per_sample_s * 1e3:.3g} ms/sample (batch {a.batch_size})" if a.per_sample_s else "ms/step")
            for a in train], "milliseconds per training step"))
    if any(a.drift and a.drift.windows for a in arts):
        out.append(svg_drift(arts))
    return out


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}table{border-collapse:collapse;font-size:13px;background:#fff}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}th{background:#f0f0f0}
.partial{background:#fde2e1;border:1px solid #d62728;padding:8px 12px;font-weight:bold}
.plot{display:block;margin:12px 0;border:1px solid #ddd}.src{color:#555;font-size:12px}"""


def html_report(results: ProfileResults) -> str:
    d = results.device
    rows = []
    for a in results.artifacts:
        L = a.latency
        if a.error:
            rows.append(f"<tr><td>{_e(a.name)}</td><td>{_e(a.format)}</td><td>{_e(a.kind)}</td>"
                        f"<td colspan='7'>failed: {_e(a.error)}</td></tr>")
            continue
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in [
            a.name, a.format, a.kind, a.runtime, _ms(L.p50_s) if L else "-", _ms(L.p90_s) if L else "-",
            _ms(L.p99_s) if L else "-", f"{_ms(L.mean_s)} ± {_ms(L.std_s, 2)} (n={L.n})" if L else "-",
            _mib(a.peak_rss), _energy_cell(a.energy)]) + f"<td class='src'>{_e(a.sha256[:16])}</td></tr>")
    notes = "".join(f"<li><b>{_e(a.name)}</b> ({_e(a.format)}): energy [{_e(a.energy.source)}] "
                    f"{_e(a.energy.note or a.energy.reason or '-')}; peak memory [{_e(a.peak_rss.source)}] "
                    f"{_e(a.peak_rss.note or a.peak_rss.reason or '-')}; latency [{_e(a.latency.source)}] "
                    f"{_e(a.latency.note or '-')}</li>"
                    for a in results.artifacts if not a.error and a.latency is not None)
    tools = ", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted(results.tool_versions.items()))
    partial = (f"<p class='partial'>PARTIAL RESULTS: {_e(results.partial_reason)}</p>" if results.partial else "")
    figs = "\n".join(plots(results))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dcl profile: {_e(d.model)}</title>
<style>{_CSS}</style></head><body>
<h1>dcl profile — {_e(d.describe())}</h1>
{partial}
<p>Device kind <b>{_e(d.kind)}</b>, serial {_e(d.serial)}, fingerprint <code>{_e(d.fingerprint)}</code>.
Created {_e(results.created)}. Target {_e(results.target or '-')}, bundle {_e(results.bundle or '-')}.</p>
<p class="src">Tool versions: {tools or '-'}</p>
<h2>Summary</h2>
<table><tr><th>artifact</th><th>format</th><th>kind</th><th>runtime</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>
<th>mean ± std ms</th><th>peak RSS MiB</th><th>energy mJ [source]</th><th>sha256</th></tr>
{''.join(rows)}</table>
<h2>Plots</h2>
{figs}
<h2>How each number was obtained</h2><ul>{notes}</ul>
</body></html>
"""
