"""Cloud, coarse matching: a nearest-neighbour index over the global pool's sample keys.

Library: faiss (faiss-cpu), Meta's similarity-search library: prebuilt wheels (no compiler at
install time), releases the GIL while searching (the HTTP service answers concurrent devices
from threads), and offers HNSW, IVF and exact indexes behind one interface, with per-search
selectors that exclude the requesting user's own samples inside the search. Keys are unit-norm
and searched by inner product (= cosine similarity).

- "hnsw" (default): graph index; build O(N log N), search ~O(log N). At 10^6 keys it answers
  in well under the 5 ms budget with recall@K >= 0.95 (bench/coda_matching.py).
- "ivf": inverted lists over k-means cells (nprobe cells scanned per query).
- "flat": exact search, the reference for recall.

A request's summary: the device's local sample keys, or, when it has more than `max_queries`,
their k-means centroids (never raw samples). Retrieval: each query vector takes its nearest
neighbours (own samples excluded); candidates are merged by their best similarity, one sample
per item (the most similar: a retrieved sample is re-keyed to the requesting user on the
device, so two for one item would only disagree), and the top K are returned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dcl_core.errors import ConfigError
from toolkit.methods.coda.config import MatchingConfig


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("CoDA's matching needs faiss; install it with: .venv/bin/pip install faiss-cpu==1.15.1") from None
    return faiss


class AnnIndex:
    """An inner-product index over unit-norm keys (rows are ids 0..N-1)."""

    def __init__(self, keys: np.ndarray, cfg: MatchingConfig, kind: str | None = None, seed: int = 0):
        faiss = _faiss()
        faiss.omp_set_num_threads(cfg.threads)
        keys = np.ascontiguousarray(keys, dtype=np.float32)
        self.kind = kind or cfg.index
        self.cfg = cfg
        self.size, self.dim = keys.shape
        metric = faiss.METRIC_INNER_PRODUCT
        if self.kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(self.dim, cfg.hnsw_m, metric)
            self.index.hnsw.efConstruction = cfg.ef_construction
        elif self.kind == "ivf":
            lists = cfg.ivf_lists or max(int(4 * math.sqrt(self.size)), 1)
            lists = min(lists, max(self.size // 39, 1))  # faiss wants >= 39 training points per cell
            self.quantizer = faiss.IndexFlatIP(self.dim)
            self.index = faiss.IndexIVFFlat(self.quantizer, self.dim, lists, metric)
            self.index.cp.seed = seed
            sample = keys if self.size <= 64 * lists else keys[np.random.default_rng(seed).choice(
                self.size, 64 * lists, replace=False)]
            self.index.train(sample)
        elif self.kind == "flat":
            self.index = faiss.IndexFlatIP(self.dim)
        else:
            raise ConfigError(f"unknown index kind {self.kind!r}; use hnsw, ivf or flat")
        self.index.add(keys)

    def search(self, queries: np.ndarray, k: int, exclude: tuple[int, int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (Q, k), best first; ids -1 where fewer exist. `exclude`: a
        [start, stop) range of ids never returned (the requesting user's own samples)."""
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.size))
        sel = None
        if exclude is not None and exclude[1] > exclude[0]:
            inner = faiss.IDSelectorRange(int(exclude[0]), int(exclude[1]))
            sel = faiss.IDSelectorNot(inner)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.cfg.ef_search, k))
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=self.cfg.nprobe)
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        sims, ids = self.index.search(queries, k, params=params)
        return sims, ids


def exact_search(keys: np.ndarray, queries: np.ndarray, k: int, exclude: tuple[int, int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k by inner product (numpy, blockwise), for recall checks."""
    keys = np.asarray(keys, dtype=np.float32)
    sims_all, ids_all = [], []
    for start in range(0, len(queries), 256):
        q = np.asarray(queries[start:start + 256], dtype=np.float32)
        s = q @ keys.T
        if exclude is not None:
            s[:, exclude[0]:exclude[1]] = -np.inf
        kk = min(k, keys.shape[0])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        ps = np.take_along_axis(s, part, 1)
        order = np.argsort(-ps, axis=1, kind="stable")
        ids_all.append(np.take_along_axis(part, order, 1))
        sims_all.append(np.take_along_axis(ps, order, 1))
    return np.concatenate(sims_all), np.concatenate(ids_all)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k that the approximate top-k found."""
    hits = [len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) / max((e >= 0).sum(), 1)
            for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else float("nan")


def summarize(keys: np.ndarray, max_queries: int, iters: int, seed: int) -> np.ndarray:
    """A request's query vectors: the keys themselves, or k-means centroids (unit norm) of them."""
    keys = np.unique(np.asarray(keys, dtype=np.float32), axis=0)  # identical keys query once
    if len(keys) <= max_queries:
        return keys
    rng = np.random.default_rng(seed)
    centroids = keys[rng.choice(len(keys), max_queries, replace=False)].copy()
    for _ in range(iters):
        assign = np.argmax(keys @ centroids.T, axis=1)  # spherical k-means
        for c in range(max_queries):
            members = keys[assign == c]
            if len(members):
                centroids[c] = members.sum(0)
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return centroids


def augmentation_size(n_local: int, cfg: MatchingConfig) -> int:
    """K for a device with n_local samples."""
    return int(min(max(round(cfg.retrieve_ratio * n_local), cfg.retrieve_min), cfg.retrieve_max))


@dataclass
class Retrieved:
    rows: np.ndarray  # pool row ids, best first
    similarity: np.ndarray  # float32, the best similarity to any query vector


def retrieve(index: AnnIndex, pool_items: np.ndarray, queries: np.ndarray, k: int,
             exclude: tuple[int, int] | None) -> Retrieved:
    """Top-k pool samples for a request: per-query neighbours merged by best similarity, one
    sample per item."""
    per_query = min(max(2 * math.ceil(k / max(len(queries), 1)), 8), index.size)
    sims, ids = index.search(queries, per_query, exclude)
    flat_ids, flat_sims = ids.reshape(-1), sims.reshape(-1)
    ok = flat_ids >= 0
    flat_ids, flat_sims = flat_ids[ok], flat_sims[ok]
    order = np.lexsort((flat_ids, -flat_sims))  # best first, ties by id (deterministic)
    flat_ids, flat_sims = flat_ids[order], flat_sims[order]
    _, first = np.unique(pool_items[flat_ids], return_index=True)  # one per item: its best
    first = np.sort(first)[:k]
    return Retrieved(flat_ids[first].astype(np.int64), flat_sims[first].astype(np.float32))
