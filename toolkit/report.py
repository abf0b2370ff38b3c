"""Console tables for method results (the CLI prints these unless --json is given)."""
from __future__ import annotations

from typing import Any

from tabulate import tabulate


def results_table(metrics: dict[str, Any]) -> str:
    results = metrics["results"]
    cols = [c for c in ("cloud_test", "device_test", "union_test", "cloud_val", "device_val", "union_val")
            if any(c in r for r in results.values())]
    rows = [[name] + [f"{r.get(c, float('nan')):.2f}" for c in cols] for name, r in results.items()]
    text = tabulate(rows, headers=["result"] + [c + " %" for c in cols], tablefmt="github")
    s = metrics.get("sizes")
    if s:
        parts = [[k, f"{v['params']:,}", f"{v['bytes']:,}"] for k, v in s.items() if isinstance(v, dict)]
        text += "\n\n" + tabulate(parts, headers=["model", "params", "bytes (fp32)"], tablefmt="github")
        text += (f"\n\ndown to device (f_d + g): {s['down_to_device_bytes']:,} bytes; "
                 f"up to cloud (f_d): {s['up_to_cloud_bytes']:,} bytes")
    return text
