"""CoDA's coarse matching at scale: ms per query and recall@K against exact search, for synthetic
pools of 10^4, 10^5 and 10^6 keys, and how both grow with the pool.

The pool: unit-norm 32-dim keys from a Gaussian mixture (1,000 centres, per-key noise), the shape
of learned sample embeddings (clustered, not uniform: uniform random keys in 32 dimensions have no
neighbourhood structure any index could exploit, and real embeddings never look like that).
Queries are fresh draws from the same mixture. Latency is one query per call on 1 thread (what
the service does per query vector); exact top-K comes from faiss's brute-force index. The index
is CoDA's own (toolkit.methods.coda.matching.AnnIndex, faiss), so this measures what `dcl serve
coda` runs. Goal: <= 5 ms per query at 10^6 with recall@K >= 0.95, and sublinear growth.

  .venv/bin/python bench/coda_matching.py [--sizes 10000,100000,1000000] [--k 100] [--index hnsw,ivf]
Prints a table (--out F: also the rows as JSON). Nothing here is a pass/fail test.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.methods.coda.config import MatchingConfig  # noqa: E402
from toolkit.methods.coda.matching import AnnIndex, recall_at_k  # noqa: E402

DIM, CENTRES = 32, 1000


def mixture(n: int, centres: np.ndarray, rng: np.random.Generator, noise: float = 0.35) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + noise * rng.standard_normal((n, DIM)).astype(np.float32) / math.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact(keys: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(keys.shape[1])
    flat.add(keys)
    return flat.search(queries, k)[1]


def measure(kind: str, keys: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int, cfg: MatchingConfig,
            build_threads: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(build_threads)
    t0 = time.perf_counter()
    index = AnnIndex(keys, MatchingConfig(**{**cfg.__dict__, "threads": build_threads}), kind=kind)
    build = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    for q in queries[:20]:  # warm-up
        index.search(q[None], k)
    found, times = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = index.search(q[None], k)
        times.append(time.perf_counter() - t)
        found.append(ids[0])
    ms = 1000 * np.array(times)
    return {"index": kind, "pool": len(keys), "k": k, "build_s": round(build, 1),
            "ms_per_query_p50": round(float(np.median(ms)), 3), "ms_per_query_mean": round(float(ms.mean()), 3),
            "ms_per_query_p99": round(float(np.percentile(ms, 99)), 3),
            "recall_at_k": round(recall_at_k(np.array(found), truth), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--index", default="hnsw,ivf")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--ef-search", type=int, default=160)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--out", default="", help="Also write the rows as JSON to this file.")
    args = ap.parse_args()
    cfg = MatchingConfig(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, ef_search=args.ef_search,
                         nprobe=args.nprobe)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    queries = mixture(args.queries, centres, np.random.default_rng(1))
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        keys = mixture(n, centres, np.random.default_rng(2))
        t0 = time.perf_counter()
        truth = exact(keys, queries, args.k)
        exact_ms = 1000 * (time.perf_counter() - t0) / len(queries)
        for kind in args.index.split(","):
            r = measure(kind, keys, queries, truth, args.k, cfg, args.build_threads)
            r["exact_ms_per_query_batched"] = round(exact_ms, 3)
            rows.append(r)
            print(json.dumps(r), flush=True)
        del keys
    for kind in args.index.split(","):  # growth: the exponent b of ms ~ pool^b between the sizes measured
        mine = [r for r in rows if r["index"] == kind]
        for a, b in zip(mine, mine[1:]):
            b["growth_exponent"] = round(math.log(b["ms_per_query_mean"] / a["ms_per_query_mean"]) /
                                         math.log(b["pool"] / a["pool"]), 3)
    cols = ["index", "pool", "k", "build_s", "ms_per_query_p50", "ms_per_query_mean", "ms_per_query_p99",
            "recall_at_k", "growth_exponent", "exact_ms_per_query_batched"]
    print(tabulate([[r.get(c, "") for c in cols] for r in rows], headers=cols, tablefmt="github"))
    if args.out:
        Path(args.out).write_text(json.dumps({"dim": DIM, "centres": CENTRES, "queries": args.queries, "rows": rows},
                                             indent=2) + "\n")


if __name__ == "__main__":
    main()
