"""CoDA's console table: per-user and overall AUC per result, then the matching facts."""
from __future__ import annotations

from typing import Any

from tabulate import tabulate


def metrics_table(metrics: dict[str, Any]) -> str:
    results = metrics["results"]
    rows = [[name, f"{r['user_auc']:.4f}", f"{r['auc']:.4f}"] for name, r in results.items()]
    text = tabulate(rows, headers=["result", "user AUC (mean)", "overall AUC"], tablefmt="github")
    base = [r for n, r in results.items() if n != "coda"]
    if "coda" in results and base:
        best = max(b["user_auc"] for b in base)
        text += f"\n\ncoda - best baseline (user AUC): {100 * (results['coda']['user_auc'] - best):+.2f} points"
    users = metrics.get("users")
    if users:
        text += (f"\nusers evaluated: {users['evaluated']} ({users['split']} split), "
                 f"{users['with_both_classes']} with both classes in their later interactions")
    m = metrics.get("matching")
    if m:
        keys = [k for k in ("index", "pool", "key_dim", "recall_vs_exact", "ms_per_request", "mean_local",
                            "mean_retrieved", "mean_kept", "kept_share", "mean_tau", "request_bytes", "batch_bytes",
                            "model_down_bytes") if k in m]
        text += "\n\n" + tabulate([[k, m[k]] for k in keys], headers=["matching", "value"], tablefmt="github")
    return text
