"""ICIIA's console table: accuracy per result on the skewed test clients, the homogeneous
control, and the cost of ICIIA over the bare backbone (measured beside the paper's formulas)."""
from __future__ import annotations

from typing import Any

from tabulate import tabulate

from toolkit.report import results_table

COLUMNS = ["test_acc", "rest_acc"]


def metrics_table(metrics: dict[str, Any]) -> str:
    text = "skewed test clients (streamed in order)\n" + results_table(metrics["results"], COLUMNS)
    base = metrics["results"].get("backbone", {}).get("test_acc")
    if isinstance(base, float):
        gains = [[k, f"{v['test_acc'] - base:+.2f}"] for k, v in metrics["results"].items()
                 if k != "backbone" and isinstance(v.get("test_acc"), float)]
        text += "\n\n" + tabulate(gains, headers=["result", "gain over backbone (points)"], tablefmt="github")
    homog = metrics.get("homogeneous")
    if homog:
        text += "\n\nhomogeneous control (same test images, no skew)\n" + results_table(homog, ["test_acc"])
    c = metrics.get("cost")
    if c:
        rows = [[name, v["partitions"], f"{v['params']:,}", f"{v['formula_params']:,}", f"{v['params_pct']:.2f}",
                 f"{v['flops']:,}", f"{v['formula_flops']:,}", f"{v['flops_pct']:.2f}"]
                for name, v in c.get("variants", {}).items()]
        text += (f"\n\ncost per streamed image ({c['tokens']} tokens, D = {c['dim']}, N = {c['layers']}) over the "
                 f"backbone ({c['backbone_params']:,} params, {c['backbone_flops']:,} FLOPs)\n")
        text += tabulate(rows, headers=["variant", "P", "params", "6D²/P·N", "params %", "FLOPs",
                                        "2(6BD²/P+2B²D)N", "FLOPs %"], tablefmt="github")
    return text
