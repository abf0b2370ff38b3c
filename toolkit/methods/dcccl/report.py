"""DC-CCL's console table: accuracy per result on cloud/device/union test (and val), and sizes."""
from __future__ import annotations

from typing import Any

from tabulate import tabulate

from toolkit.report import results_table

COLUMNS = ("cloud_test", "device_test", "union_test", "cloud_val", "device_val", "union_val")


def metrics_table(metrics: dict[str, Any]) -> str:
    results = metrics["results"]
    cols = [c for c in COLUMNS if any(c in r for r in results.values())]
    text = results_table(results, cols)
    s = metrics.get("sizes")
    if s:
        parts = [[k, f"{v['params']:,}", f"{v['bytes']:,}"] for k, v in s.items() if isinstance(v, dict)]
        text += "\n\n" + tabulate(parts, headers=["model", "params", "bytes (fp32)"], tablefmt="github")
        text += (f"\n\ndown to device (f_d + g): {s['down_to_device_bytes']:,} bytes; "
                 f"up to cloud (f_d): {s['up_to_cloud_bytes']:,} bytes")
        text += f"\ndown to device vs cloud model, (f_d + g) / f_c: {s['down_vs_cloud']:.3g} (bytes)"
    return text
