"""Console tables of method results (the CLI prints these unless --json is given)."""
from __future__ import annotations

from typing import Any

from tabulate import tabulate


def results_table(results: dict[str, dict[str, Any]], columns: list[str] | None = None, unit: str = "%") -> str:
    """One row per result, one column per metric (in `columns` order, or as first seen);
    a metric a row lacks is shown as nan, so a failed row keeps the table's columns."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in results.values() for k in r))
    rows = [[name] + [_cell(r.get(c, float("nan"))) for c in columns] for name, r in results.items()]
    suffix = f" {unit}" if unit else ""
    return tabulate(rows, headers=["result"] + [c + suffix for c in columns], tablefmt="github")


def _cell(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)
