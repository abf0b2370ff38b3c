"""CoDA's console table: per-user and overall AUC per result, the same per bucket of local-sample
count (sparse users), the devices' data, then the matching facts."""
from __future__ import annotations

from typing import Any

from tabulate import tabulate


def _gain(results: dict[str, Any]) -> float | None:
    """CoDA's user AUC minus the best baseline's, in points."""
    base = [r["user_auc"] for n, r in results.items() if n != "coda"]
    return 100 * (results["coda"]["user_auc"] - max(base)) if "coda" in results and base else None


def metrics_table(metrics: dict[str, Any]) -> str:
    results = metrics["results"]
    rows = [[name, f"{r['user_auc']:.4f}", f"{r['auc']:.4f}"] for name, r in results.items()]
    text = tabulate(rows, headers=["result", "user AUC (mean)", "overall AUC"], tablefmt="github")
    gain = _gain(results)
    if gain is not None:
        text += f"\n\ncoda - best baseline (user AUC): {gain:+.2f} points"
    users = metrics.get("users")
    if users:
        text += (f"\nusers evaluated: {users['evaluated']} ({users['split']} split), "
                 f"{users['with_both_classes']} with both classes in their later interactions")
    data = metrics.get("log", {}).get("data")
    if data:
        d = data.get("local_per_device", {})
        where = f", cut-off T0 {data['cutoff_utc']} UTC" if "cutoff_utc" in data else ""
        text += (f"\nscenario {data.get('scenario', 'shared')}{where}: {data['users']} devices "
                 f"({data.get('left_out_users', 0)} users left out), cloud pool {data.get('pool_samples', '?')} samples; "
                 f"local samples per device: median {d.get('median')}, p10 {d.get('p10')}, p90 {d.get('p90')}")
    buckets = metrics.get("buckets")
    if buckets:
        names = list(results)
        rows = []
        for label, res in buckets.items():
            g = _gain(res)
            rows.append([label, next(iter(res.values()))["users"]] + [f"{res[n]['user_auc']:.4f}" if n in res else "-"
                                                                      for n in names] +
                        ["-" if g is None else f"{g:+.2f}"])
        text += "\n\n" + tabulate(rows, headers=["local samples", "users"] + names + ["coda - best"],
                                  tablefmt="github", disable_numparse=True) + "\n(user AUC per bucket of local-sample count)"
    m = metrics.get("matching")
    if m:
        keys = [k for k in ("index", "pool", "key_dim", "recall_vs_exact", "ms_per_request", "mean_local",
                            "mean_retrieved", "mean_kept", "kept_share", "mean_tau", "request_bytes", "batch_bytes",
                            "model_down_bytes") if k in m]
        text += "\n\n" + tabulate([[k, m[k]] for k in keys], headers=["matching", "value"], tablefmt="github")
    return text
