"""How numbers and formats read in a report: the table cells the console and the HTML page share,
and each format's display name and colour (taken from `exporters.formats`, so a new format shows
up in every report without touching this package)."""
from __future__ import annotations

from exporters.formats import FORMATS, PYTORCH_COLOR
from runtime_harness.metrics import Measurement

MIB = 2**20


def ms(seconds: float | None, digits: int = 3) -> str:
    """Seconds as milliseconds with `digits` significant digits; '-' where there is no number."""
    return "-" if seconds is None else f"{seconds * 1e3:.{digits}g}"


def mib(m: Measurement) -> str:
    """A byte measurement in MiB; '-' where it is unavailable (the reason is shown elsewhere)."""
    return "-" if m.value is None else f"{m.value / MIB:.2f}"


def energy_cell(m: Measurement) -> str:
    """Joules as millijoules with their source and flags, or why there is no number: an energy
    figure never appears without saying whether it was measured or estimated."""
    if m.value is None:
        return f"unavailable: {m.reason}"
    return f"{m.value * 1e3:.3g} [{', '.join([m.source, *m.flags])}]"


def format_display(fmt: str) -> str:
    """What a person reads for a format; names without a descriptor (the PyTorch eager baseline)
    read as they are."""
    f = FORMATS.get(fmt)
    return f.display if f else fmt


def format_color(fmt: str) -> str:
    """The format's report colour; anything without a descriptor is the eager baseline's grey."""
    f = FORMATS.get(fmt)
    return f.color if f else PYTORCH_COLOR
