"""Device, fine filtering: train the personalized sample classifier (local = 1, retrieved = 0)
and keep the retrieved samples it finds local enough.

The keep rule (config `filter.tau_rule`):
- "local_quantile" (default): tau = the `tau_quantile` quantile of P(local) over the device's
  own samples (numpy's linear interpolation); a retrieved sample is kept when P(local) >= tau,
  i.e. when it looks at least as local as the q-th least local of the user's own samples. The
  rule adapts to each user's classifier (its scale differs with how separable the user's data
  is), which a fixed threshold cannot. The local scores are in-sample (the classifier trained on
  them), so they run high; q = 0.5 was chosen on the validation users (shared scenario: 0.25,
  0.5 and 0.75 tried; time split: 0.25, 0.4, 0.5, 0.6, 0.75 and 0.9).
- "fixed": tau = `tau_fixed`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit.methods.coda.config import FilterConfig


def threshold(local_scores: np.ndarray, cfg: FilterConfig) -> float:
    if cfg.tau_rule == "fixed" or len(local_scores) == 0:
        return float(cfg.tau_fixed)
    return float(np.quantile(np.asarray(local_scores, dtype=np.float64), cfg.tau_quantile))


@dataclass
class Filtered:
    keep: np.ndarray  # bool mask over the retrieved samples
    tau: float
    local_scores: np.ndarray
    retrieved_scores: np.ndarray


def keep_rule(local_scores: np.ndarray, retrieved_scores: np.ndarray, cfg: FilterConfig) -> Filtered:
    tau = threshold(local_scores, cfg)
    return Filtered(np.asarray(retrieved_scores) >= tau, tau, np.asarray(local_scores), np.asarray(retrieved_scores))


def classifier_data(local_items: np.ndarray, local_clicks: np.ndarray, ret_items: np.ndarray,
                    ret_clicks: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The classifier's training set: inputs (item, click) and target y (local 1, retrieved 0)."""
    inputs = {"item": np.concatenate([local_items, ret_items]).astype(np.int64),
              "click": np.concatenate([local_clicks, ret_clicks]).astype(np.float32)}
    y = np.concatenate([np.ones(len(local_items), np.float32), np.zeros(len(ret_items), np.float32)])
    return inputs, y
