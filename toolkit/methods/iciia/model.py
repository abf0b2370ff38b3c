"""The ICIIA module (arXiv 2211.06276): intra-client, inter-image attention between a frozen
backbone and its classifier, and the streaming program a phone runs.

A client's images form a set of B tokens (the target image's pooled backbone feature plus up to
B-1 features of that client's recent images); no positional encoding, so the order of the history
does not matter (a ring buffer may hold it in any order). Padding of a partly filled history is
the only mask. N post-LayerNorm encoder layers, each

    h = LN(x + MSA(x));  y = LN(h + MLP(h)),   MLP: D -> D -> D with ReLU, dropout 0.1,

then ReLU and Linear(D -> classes). Every one of the 6 linear maps of a layer (Q, K, V, out,
MLP1, MLP2) is a `PartitionedLinear`: block-diagonal with P groups of D/P (ICIIA-T; P = 1 is
ICIIA-B), followed by a feature shuffle. Cost per layer on B tokens: 6 D^2/P weights,
6 B D^2/P + 2 B^2 D multiply-adds (torch's FlopCounterMode counts 2 FLOPs per multiply-add).

Everything is plain ops (batched matmul, softmax, LayerNorm, ReLU, reshape/permute) so every
runtime runs the same arithmetic; no nn.MultiheadAttention (its fused paths differ per runtime).
"""
from __future__ import annotations

import math

import torch
from torch import nn

# Additive attention bias of an empty history slot. exp(-1e4 + s) underflows to exactly 0 in fp32
# for any realistic score s, so a padded slot gets weight 0 (the output is exact for a partial
# history), and 1e4 stays finite in fp16 (a runtime computing in half precision gets no 0 * inf).
MASK_BIAS = 1.0e4


class PartitionedLinear(nn.Module):
    """y = shuffle(blockdiag(W_1..W_P) x) + b: P groups of D/P features, each with its own
    (D/P x D/P) map, as one batched matmul. shuffle: view (P, D/P), transpose, flatten, so the
    next map's groups each see features of every group. P = 1 is a dense Linear (no shuffle)."""

    def __init__(self, dim: int, groups: int = 1, shuffle: bool = True):
        super().__init__()
        if dim % groups:
            raise ValueError(f"dim {dim} is not divisible by {groups} groups")
        self.dim, self.groups, self.shuffle = dim, groups, shuffle and groups > 1
        g = dim // groups
        bound = 1.0 / math.sqrt(g)  # nn.Linear's default init for each block (fan_in = D/P)
        self.weight = nn.Parameter(torch.empty(groups, g, g).uniform_(-bound, bound))  # (P, in, out)
        self.bias = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, P, g = x.shape[:-1], self.groups, self.dim // self.groups
        t = x.reshape(-1, P, g).transpose(0, 1)  # (P, T, g)
        y = torch.matmul(t, self.weight)  # (P, T, g): one (T, g) x (g, g) product per group
        # shuffled: element (group p, feature j) goes to j * P + p; plain: p * g + j
        y = y.permute(1, 2, 0) if self.shuffle else y.transpose(0, 1)
        return y.reshape(*lead, self.dim) + self.bias

    def dense_weight(self) -> torch.Tensor:
        """The equivalent (D, D) matrix W with y = x @ W + b (shuffle included), for tests."""
        eye = torch.eye(self.dim)
        with torch.no_grad():
            return self.forward(eye) - self.bias


class EncoderLayer(nn.Module):
    """Post-LN transformer encoder layer over (S, B, D) token sets with an additive key bias."""

    def __init__(self, dim: int, heads: int, groups: int, shuffle: bool, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q, self.k, self.v, self.out, self.mlp1, self.mlp2 = (
            PartitionedLinear(dim, groups, shuffle) for _ in range(6))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        S, B, D = x.shape
        H, dh = self.heads, D // self.heads
        q = (self.q(x) * (1.0 / math.sqrt(dh))).reshape(S, B, H, dh).transpose(1, 2)  # (S, H, B, dh)
        k = self.k(x).reshape(S, B, H, dh).transpose(1, 2)
        v = self.v(x).reshape(S, B, H, dh).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) + key_bias  # (S, H, B, B); bias (S, 1, 1, B)
        weights = self.drop(torch.softmax(scores, dim=-1))
        a = torch.matmul(weights, v).transpose(1, 2).reshape(S, B, D)
        h = self.norm1(x + self.drop(self.out(a)))
        m = self.mlp2(self.drop(torch.relu(self.mlp1(h))))
        return self.norm2(h + self.drop(m))


class ICIIA(nn.Module):
    """N encoder layers + ReLU + Linear head over sets of B client features."""

    def __init__(self, dim: int, num_classes: int, layers: int = 1, heads: int = 4, partitions: int = 1,
                 shuffle: bool = True, dropout: float = 0.1):
        super().__init__()
        self.dim, self.partitions, self.shuffle = dim, partitions, shuffle
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, partitions, shuffle, dropout) for _ in range(layers))
        self.head = nn.Linear(dim, num_classes)

    def attend(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """tokens (S, B, D), valid (S, B) 1.0/0.0 -> the head's input features (S, B, D)."""
        key_bias = ((valid - 1.0) * MASK_BIAS).reshape(valid.shape[0], 1, 1, valid.shape[1])
        x = tokens
        for layer in self.layers:
            x = layer(x, key_bias)
        return torch.relu(x)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Logits (S, B, classes) of every token of every set."""
        return self.head(self.attend(tokens, valid))

    def attention_params(self) -> int:
        """Parameters of the encoder layers (the head replaces the backbone's classifier)."""
        return sum(p.numel() for p in self.layers.parameters())


def projection_params(dim: int, partitions: int, layers: int) -> int:
    """The paper's parameter count: 6 D^2 / P per layer (weights of the six maps only)."""
    return 6 * dim * dim // partitions * layers


def formula_macs(dim: int, partitions: int, layers: int, tokens: int) -> int:
    """The paper's cost for a set of B tokens: (6 B D^2 / P + 2 B^2 D) N multiply-adds."""
    return (6 * tokens * dim * dim // partitions + 2 * tokens * tokens * dim) * layers


class StreamingClassifier(nn.Module):
    """What the phone runs per image: backbone feature + ICIIA over the cached history.

    Inputs: x (1, 1, 28, 28); history (B-1, D) features of the client's previous images (any
    order, e.g. a ring buffer); history_mask (B-1,) 1.0 for a filled slot, 0.0 for an empty one.
    Outputs: logits (1, classes), feature (1, D) of this image (for the app's ring buffer), and
    attended (1, D), the head's input (what the `head_finetune` program trains on).
    Empty slots are zeroed and masked, so their content never matters.
    """

    def __init__(self, extractor: nn.Module, iciia: ICIIA):
        super().__init__()
        self.extractor = extractor
        self.iciia = iciia
        # the target token's validity, a constant: as a (non-saved) buffer it is a program constant,
        # where ones_like would be an op that ExecuTorch's XNNPACK delegate does not take
        self.register_buffer("target_valid", torch.ones(1), persistent=False)

    def forward(self, x: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor):
        feature = self.extractor(x)  # (1, D)
        tokens = torch.cat([feature, history * history_mask.unsqueeze(-1)], dim=0).unsqueeze(0)  # (1, B, D)
        valid = torch.cat([self.target_valid, history_mask], dim=0).unsqueeze(0)  # (1, B)
        attended = self.iciia.attend(tokens, valid)[:, 0]  # the target token (1, D)
        return self.iciia.head(attended), feature, attended


class FeatureExtractor(nn.Module):
    """A registry model with its last Linear replaced by identity: image -> pooled feature."""

    def __init__(self, model: nn.Module):
        super().__init__()
        last = model.last_layer
        path = next(n for n, m in model.named_modules() if m is last)
        parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
        setattr(parent, path.rpartition(".")[2], nn.Identity())
        self.model = model
        self.dim = last.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class HeadProgram(nn.Module):
    """The per-client head fine-tune program: attended features (N, D) -> logits via the head."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head

    def forward(self, attended: torch.Tensor) -> torch.Tensor:
        return self.head(attended)


class BackboneProgram(nn.Module):
    """The bare backbone with its own classifier: image -> logits (the profiler's reference)."""

    def __init__(self, extractor: nn.Module, classifier: nn.Linear):
        super().__init__()
        self.extractor = extractor
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.extractor(x))


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass as torch's FlopCounterMode counts them (matmul/conv: 2 per
    multiply-add; elementwise ops, softmax and LayerNorm are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    was = module.training
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    module.train(was)
    return int(counter.get_total_flops())


__all__ = [
    "ICIIA",
    "MASK_BIAS",
    "BackboneProgram",
    "FeatureExtractor",
    "HeadProgram",
    "PartitionedLinear",
    "StreamingClassifier",
    "count_flops",
    "formula_macs",
    "projection_params",
]
