"""The slow model: a small DCN-v2 style CTR network with its last hidden layer as a 2nd output.

Architecture (``T = max_tokens``, ``E = emb_dim``, ``W = dense_width = max(1, D)``)::

    tokens (n, T) int64 --Embedding(n_buckets, E, padding_idx=0; row 0 is zero)--> (n, T*E)
    dense  (n, W) float32 --(x - mean) / std, clamped to +-dense_clip------> (n, W)
    x0 = concat -> (n, d) with d = T*E + W
    cross:  x_{l+1} = x0 * (W_l x_l + b_l) + x_l      (cross_layers times)
            cross="full":    W_l full rank, (d, d)             -- d^2 multiply-adds per row
            cross="lowrank": W_l = U_l V_l, U_l (d, r), V_l (r, d) -- 2 d r per row (DCN-v2's
                             low-rank cross, one expert; r = cross_rank)
    deep:   Linear -> ReLU for each size in deep_sizes
    structure="parallel": deep(x0) next to the cross stack; hidden = ReLU(Linear(concat(cross, deep)))
    structure="stacked":  deep(cross) on top of the cross stack; hidden = ReLU(Linear(deep))
                                                       (n, hidden_dim)
    logit  = Linear(hidden) [+ sum_t wide[tokens_t]]   (n,)  (wide: a per-token scalar, if cfg.wide)
    prob   = sigmoid(logit)

The dense standardisation (``dense_mean``, ``dense_std``) is stored as buffers, fitted once on
the warm-up window (:meth:`CTRModel.fit_standardisation`) and kept fixed across warm starts so
the weights keep their meaning. ``hidden`` is what the error memory hashes (see DESIGN.md).
"""

from __future__ import annotations

import numpy as np
try:
    import torch
except ModuleNotFoundError as exc:  # torch is the ``train`` extra: the worker and replay scoring run without it
    raise ModuleNotFoundError("training and ONNX export need torch: pip install 'reloop[train]'", name="torch") from exc
from torch import nn

# The configuration is torch-free (reloop.models.config); re-exported here for callers.
from reloop.models.config import LEGACY_MODEL_CONFIG, CrossKind, ModelConfig, config_from_meta, same_architecture
from reloop.models.features import FeatureSpec

__all__ = ["ModelConfig", "CTRModel", "CrossLayer", "LowRankCrossLayer", "CrossKind", "LEGACY_MODEL_CONFIG",
           "config_from_meta", "same_architecture"]

class CrossLayer(nn.Module):
    """One DCN-v2 cross layer: ``x0 * (W x + b) + x`` with ``W`` of shape ``(d, d)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x0``, ``x``: ``(n, d)`` float32 -> ``(n, d)`` float32."""
        return x0 * self.linear(x) + x


class LowRankCrossLayer(nn.Module):
    """DCN-v2 low-rank cross layer: ``x0 * (U (V x) + b) + x``, ``V`` ``(r, d)``, ``U`` ``(d, r)``."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x0``, ``x``: ``(n, d)`` float32 -> ``(n, d)`` float32."""
        return x0 * self.up(self.down(x)) + x


class CTRModel(nn.Module):
    """CTR model over hashed tokens and dense features, exposing its last hidden layer.

    Args:
        spec: feature spec (hash space, tokens per row, dense columns).
        config: architecture; weights are initialised under ``torch.manual_seed(config.seed)``
            (the global torch RNG state is saved and restored around initialisation).
    """

    def __init__(self, spec: FeatureSpec, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.config = config if config is not None else ModelConfig()
        cfg = self.config
        width = spec.dense_width
        in_dim = spec.max_tokens * cfg.emb_dim + width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.embedding = nn.Embedding(spec.n_buckets, cfg.emb_dim, padding_idx=0)
            nn.init.normal_(self.embedding.weight, std=0.05)
            with torch.no_grad():
                self.embedding.weight[0].zero_()
            if cfg.cross == "full":
                self.cross = nn.ModuleList(CrossLayer(in_dim) for _ in range(cfg.cross_layers))
            else:
                self.cross = nn.ModuleList(LowRankCrossLayer(in_dim, cfg.cross_rank) for _ in range(cfg.cross_layers))
            deep: list[nn.Module] = []
            prev = in_dim
            for size in cfg.deep_sizes:
                deep += [nn.Linear(prev, size), nn.ReLU()]
                prev = size
            self.deep = nn.Sequential(*deep)
            self.hidden_layer = nn.Linear(prev if cfg.structure == "stacked" else in_dim + prev, cfg.hidden_dim)
            self.output = nn.Linear(cfg.hidden_dim, 1)
            self.wide: nn.Embedding | None = None
            if cfg.wide:
                self.wide = nn.Embedding(spec.n_buckets, 1, padding_idx=0)
                nn.init.zeros_(self.wide.weight)
        self.register_buffer("dense_mean", torch.zeros(width))
        self.register_buffer("dense_std", torch.ones(width))
        self.register_buffer("hidden_center", torch.zeros(self.config.hidden_dim))

    def sparse_tables(self) -> list[nn.Embedding]:
        """The hashed tables (trained with ``SparseAdam``, no weight decay; row 0 stays zero)."""
        return [self.embedding] + ([self.wide] if self.wide is not None else [])

    @property
    def hidden_dim(self) -> int:
        """Width ``H`` of the hidden output."""
        return self.config.hidden_dim

    def fit_standardisation(self, dense: np.ndarray | torch.Tensor, *, min_std: float = 1e-6) -> None:
        """Set ``dense_mean``/``dense_std`` from warm-up rows ``dense`` ``(n, D)`` float32.

        Columns with a std below ``min_std`` (constant columns) get std 1. With ``D == 0`` or
        ``n == 0`` the identity transform (mean 0, std 1) is kept.
        """
        values = torch.as_tensor(np.asarray(dense, dtype=np.float32))
        if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
            return
        if values.shape[1] != self.spec.n_dense:
            raise ValueError(f"dense has {values.shape[1]} columns, spec has {self.spec.n_dense}")
        mean = values.double().mean(dim=0)
        std = values.double().std(dim=0, unbiased=False)
        std = torch.where(std < min_std, torch.ones_like(std), std)
        with torch.no_grad():
            self.dense_mean.copy_(mean.float())
            self.dense_std.copy_(std.float())

    @torch.no_grad()
    def fit_hidden_center(self, tokens: np.ndarray, dense: np.ndarray, batch_size: int = 4096) -> None:
        """Set ``hidden_center`` to the mean hidden vector over rows ``(n, T)``, ``(n, D)``.

        The hidden output is ReLU-activated, so every vector lies in the positive orthant and
        random hyperplanes through the origin (SimHash) split them poorly. Centring the output
        on the training mean spreads the codes over the buckets (measured on ML-100K: error
        memory gain +0.28 -> +0.52 AUC points). It does not change the probability output.
        """
        was_training = self.training
        self.eval()
        total = torch.zeros(self.config.hidden_dim, dtype=torch.float64)
        for lo in range(0, len(tokens), batch_size):
            t = torch.as_tensor(tokens[lo:lo + batch_size])
            d = torch.as_tensor(dense[lo:lo + batch_size])
            total += self.logits_and_hidden(t, d)[1].double().sum(dim=0)
        self.hidden_center.copy_((total / max(1, len(tokens))).float())
        self.train(was_training)

    def _pad_dense(self, dense: torch.Tensor) -> torch.Tensor:
        if dense.shape[1] == 0:
            return torch.zeros(dense.shape[0], 1, dtype=dense.dtype, device=dense.device)
        return dense

    def logits_and_hidden(self, tokens: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(n,)`` float32 and hidden ``(n, H)`` float32 (centred: ``relu(...) - hidden_center``).

        Args:
            tokens: ``(n, T)`` int64 token ids in ``[0, n_buckets)``, 0 = padding.
            dense: ``(n, D)`` or ``(n, dense_width)`` float32 raw (unstandardised) values.
        """
        dense = self._pad_dense(dense)
        # Padding id 0 maps to row 0, which is zero and stays zero (``padding_idx=0``: no
        # gradient, no weight decay on the table), so no mask is needed: multiplying by a
        # (n, T, 1) mask was 9% of the ONNX graph's time at batch 256 (a broadcast Mul).
        emb = self.embedding(tokens).reshape(tokens.shape[0], -1)  # (n, T*E)
        clip = self.config.dense_clip
        scaled = torch.clamp((dense - self.dense_mean) / self.dense_std, -clip, clip)
        x0 = torch.cat([emb, scaled], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        if self.config.structure == "stacked":
            hidden = torch.relu(self.hidden_layer(self.deep(x)))
        else:
            hidden = torch.relu(self.hidden_layer(torch.cat([x, self.deep(x0)], dim=1)))
        logits = self.output(hidden).squeeze(-1)
        if self.wide is not None:
            logits = logits + self.wide(tokens).sum(dim=(1, 2))
        return logits, hidden - self.hidden_center

    def forward(self, tokens: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probability ``(n,)`` float32 in (0, 1) and hidden ``(n, H)`` float32."""
        logits, hidden = self.logits_and_hidden(tokens, dense)
        return torch.sigmoid(logits), hidden

    def copy_from(self, other: CTRModel) -> None:
        """Copy weights and standardisation buffers from ``other`` (same spec and architecture)."""
        if other.spec != self.spec:
            raise ValueError(f"cannot warm start: spec {other.spec} != {self.spec}")
        self.load_state_dict(other.state_dict())
