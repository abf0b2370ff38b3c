"""The geometry of the report's plots as plain data: shapes in pixel coordinates on a framed,
labelled axis. Python decides where things go; templates/plot.svg.j2 decides how each shape is
written as SVG (with autoescaping), so no markup is assembled from strings here."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

WIDTH, LABEL_W, ROW_H, TOP, BOTTOM = 1040, 320, 34, 36, 44  # pixels
LABEL_CHARS = 46  # row labels longer than this are cut so they stay left of the plot area


@dataclass(frozen=True)
class Line:
    kind: ClassVar[str] = "line"
    x1: float
    y1: float
    x2: float
    y2: float
    stroke: str
    width: float | None = None
    dash: str | None = None


@dataclass(frozen=True)
class Rect:
    kind: ClassVar[str] = "rect"
    x: float
    y: float
    w: float
    h: float
    fill: str
    opacity: float | None = None
    stroke: str | None = None
    dash: str | None = None


@dataclass(frozen=True)
class Circle:
    kind: ClassVar[str] = "circle"
    cx: float
    cy: float
    r: float
    fill: str
    opacity: float | None = None
    stroke: str | None = None


@dataclass(frozen=True)
class Text:
    kind: ClassVar[str] = "text"
    x: float
    y: float
    text: str
    size: int
    fill: str
    anchor: str | None = None
    bold: bool = False


@dataclass(frozen=True)
class Polyline:
    kind: ClassVar[str] = "polyline"
    points: list[tuple[float, float]]
    stroke: str
    width: float


Shape = Line | Rect | Circle | Text | Polyline


@dataclass
class Plot:
    """One <svg>: its title (also the accessible name) and every shape, frame included."""

    title: str
    height: float
    shapes: list[Shape] = field(default_factory=list)
    width: int = WIDTH


class Scale:
    """Value -> x pixel, linear from 0 or log10 when values span orders of magnitude."""

    def __init__(self, lo: float, hi: float, x0: float, x1: float, log: bool):
        self.log = log and lo > 0
        self.x0, self.x1 = x0, x1
        if self.log:
            self.lo, self.hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
        else:
            self.lo, self.hi = 0.0, nice(hi if hi > 0 else 1.0)

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


def nice(v: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above v: an axis end a person reads at a glance."""
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def num(v: float) -> str:
    """A tick or bar value: three significant digits."""
    return f"{v:.3g}"


def framed(title: str, n_rows: int, scale: Scale, unit: str, body: list[Shape]) -> Plot:
    """`body` on a white card with the title, vertical grid lines at the scale's ticks and the
    x-axis unit below `n_rows` rows."""
    h = TOP + n_rows * ROW_H + BOTTOM
    axis_y = TOP + n_rows * ROW_H + 4
    shapes: list[Shape] = [Rect(0, 0, WIDTH, h, "#ffffff"), Text(8, 22, title, 15, "#222", bold=True)]
    for t in scale.ticks():
        x = scale(t)
        shapes += [Line(x, TOP, x, axis_y, "#e3e3e3"), Text(x, axis_y + 16, num(t), 11, "#555", anchor="middle")]
    shapes.append(Text((scale.x0 + scale.x1) / 2, axis_y + 34, unit + (" (log scale)" if scale.log else ""), 12,
                       "#333", anchor="middle"))
    return Plot(title, h, shapes + body)


def row_label(i: int, text: str, color: str) -> list[Shape]:
    """A colour swatch and the (shortened) label left of row i."""
    y = TOP + i * ROW_H + ROW_H / 2 + 4
    short = text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"
    return [Rect(8, y - 10, 10, 10, color), Text(24, y, short, 12, "#222")]
