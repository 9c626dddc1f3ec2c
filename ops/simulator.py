"""Deterministic traffic simulator: requests, delayed clicks and media events from a known world.

World (built once from ``SimConfig.seed``):

- users ``u`` with latent factors ``U[u]`` in R^latent_dim, a segment ``s0..s3``, an age
  bucket, a primary device and an activity weight (lognormal; busy users request and watch
  more);
- items ``i`` with latent factors ``V[i]`` (pulled towards a per-genre centre), a genre (one of
  12), a bias ``a[i]``, a popularity (lognormal, normalised to max 1), a modality (video or
  audio) and a content embedding ``c[i]`` in R^media_dim, unit norm, built from the genre's
  direction plus a projection of ``V[i]`` plus noise (so content is correlated with both);
- a genre-affinity table ``A[segment, genre]`` (normal, std ``genre_scale``).

Click model (the ground truth; :meth:`Simulator.true_ctr` evaluates it)::

    p(click | u, i) = sigmoid( logit(base_ctr) + a[i]
                               + sgn * (uv_scale * U[u].V[i] + A[seg(u), genre(i)])
                               + media_weight * max_{h in H(u)} cos(c[i], c[h]) )

``H(u)`` is the set of the user's last ``media_history`` watched items (media events strictly
earlier in the stream); the media term is 0 when ``H(u)`` is empty. ``sgn`` is -1 for users of
``shift_segment`` at event times ``ts >= shift_ts`` (the abrupt shift: that segment's genre
affinities and latent preferences flip sign) and +1 otherwise. ``base_ctr`` is the CTR of a
neutral pair; the realised mean CTR is higher (about 0.15-0.2 at defaults: sigmoid is convex
there and the candidate mix is popularity-weighted).

Traffic: request arrivals are a Poisson process at ``requests_per_s`` (event time); the user is
drawn by activity, the device is the user's primary one 75% of the time; the
``candidates_per_request`` candidates are drawn without replacement proportionally to
popularity. Each candidate is clicked independently with probability ``p``; a click arrives
``click_delay_s`` (uniform) after its request. Between consecutive requests, Poisson
(``media_per_request``) media events happen at uniform times: an active-weighted user watches
an item drawn proportionally to ``popularity * exp(preference)`` (the same, possibly shifted,
preference as above) and the event carries the item's content plus small noise, renormalised.

Faults (``SimConfig.faults``, default none; ground truth from :meth:`Simulator.faults`): each
:class:`FaultSpec` applies to the (request, candidate) rows matching its slice ``where`` (e.g.
``{"genre": "horror"}`` or ``{"age_bucket": "18-24", "device": "tv"}``; keys ``age_bucket``,
``device``, ``segment``, ``genre``) for requests ``round(start_frac * n) <= k < round(end_frac
* n)`` of a run of ``n`` requests:

- ``ctr_collapse``: the click probability is multiplied by ``1 - magnitude`` (an item slice
  stops converting);
- ``label_shift``: ``magnitude`` is added to the click logit (a user segment clicks more, or
  less when negative);
- ``broken_feature``: clicks are unchanged, but the candidate feature ``feature`` (``genre``
  or ``popularity``) is missing from the emitted features (a client that stops sending it):
  the model reads a corrupted input, so its predictions on the slice are off -- with the
  default ``genre``, the slow model over-predicts there by ~0.05-0.1.

Faults draw no random numbers, so a run without faults is byte-identical to one from a
config without the field, and a run with faults sees the same arrivals, users, candidates
and uniforms (only the clicks the faults change differ). ``true_ctr`` ignores faults.

Determinism: independent numpy streams (world, arrivals, users, candidates, media, clicks) are
spawned from the seed and drawn in fixed-size blocks, so equal configs give byte-identical
encoded streams (same numpy version and platform), and the first ``k`` requests of a run do not
depend on ``n_requests`` except through the shift time. Timestamps are rounded to microseconds.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from reloop.streams.events import Candidate, Event, Interaction, MediaEvent, RecommendationRequest

log = logging.getLogger(__name__)

SEGMENTS: tuple[str, ...] = ("s0", "s1", "s2", "s3")
GENRES: tuple[str, ...] = (
    "action", "comedy", "drama", "horror", "romance", "scifi",
    "documentary", "animation", "thriller", "music", "news", "sports",
)
AGE_BUCKETS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+")
DEVICES: tuple[str, ...] = ("phone", "tv", "web")
MODALITIES: tuple[str, ...] = ("video", "audio")
FAULT_KINDS: tuple[str, ...] = ("ctr_collapse", "label_shift", "broken_feature")
_SLICE_VALUES: dict[str, tuple[str, ...]] = {"age_bucket": AGE_BUCKETS, "device": DEVICES, "segment": SEGMENTS,
                                             "genre": GENRES}


class FaultSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One injected fault (see the module docstring for what each ``kind`` does).

    Attributes:
        kind: ``ctr_collapse``, ``label_shift`` or ``broken_feature``.
        where: slice predicates, feature name -> value, all must hold (1 or 2 usually).
        start_frac / end_frac: active for requests ``round(frac * n)``, end excluded.
        magnitude: CTR fraction removed (``ctr_collapse``, in [0, 1]); logit added
            (``label_shift``); unused by ``broken_feature``.
        feature: the candidate feature ``broken_feature`` drops.
    """

    kind: str
    where: dict[str, str]
    start_frac: float
    end_frac: float = 1.0
    magnitude: float = 0.95
    feature: str = "genre"

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if not self.where or any(_SLICE_VALUES.get(k) is None or v not in _SLICE_VALUES[k]
                                 for k, v in self.where.items()):
            raise ValueError(f"fault slice must name known values of {tuple(_SLICE_VALUES)}: {self.where}")
        if not 0.0 <= self.start_frac < self.end_frac <= 1.0:
            raise ValueError("fault needs 0 <= start_frac < end_frac <= 1")
        if not math.isfinite(self.magnitude) or (self.kind == "ctr_collapse" and not 0.0 <= self.magnitude <= 1.0):
            raise ValueError("fault magnitude must be finite (in [0, 1] for ctr_collapse)")
        if self.kind == "broken_feature" and self.feature not in ("popularity", "genre"):
            raise ValueError("broken_feature corrupts a candidate feature: popularity or genre")

    @property
    def signature(self) -> list[str]:
        """The slice as sorted ``name=value`` predicates."""
        return sorted(f"{k}={v}" for k, v in self.where.items())


_BLOCK = 512  # requests per generation block (fixed: draws must not depend on n_requests)


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Simulator parameters (times in event-time seconds, rates per event-time second)."""

    seed: int = 0
    n_users: int = 2000
    n_items: int = 1000
    latent_dim: int = 8
    media_dim: int = 32  # must equal the deployment's Limits.media_dim
    candidates_per_request: int = 20
    requests_per_s: float = 50.0
    start_ts: float = 1_700_000_000.0
    shift_at: float | None = 0.6  # fraction of the run's requests; None = no shift
    shift_segment: str = "s1"
    click_delay_s: tuple[float, float] = (1.0, 20.0)  # uniform [lo, hi] after the request
    media_per_request: float = 0.5
    media_weight: float = 0.0
    media_history: int = 5  # items in H(u)
    media_noise: float = 0.05  # per-dimension std of the noise added to content
    base_ctr: float = 0.1
    uv_scale: float = 0.8
    genre_scale: float = 1.0
    item_bias_scale: float = 0.3
    faults: tuple[FaultSpec, ...] = ()  # injected faults with ground truth (Simulator.faults)

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_items < 1 or self.latent_dim < 1 or self.media_dim < 1:
            raise ValueError("n_users, n_items, latent_dim and media_dim must be >= 1")
        if not 1 <= self.candidates_per_request <= self.n_items:
            raise ValueError("candidates_per_request must be in [1, n_items]")
        if not (self.requests_per_s > 0 and self.media_per_request >= 0 and self.media_history >= 1):
            raise ValueError("requests_per_s > 0, media_per_request >= 0, media_history >= 1 required")
        if self.shift_at is not None and not 0.0 <= self.shift_at <= 1.0:
            raise ValueError("shift_at must be in [0, 1] or None")
        if self.shift_segment not in SEGMENTS:
            raise ValueError(f"shift_segment must be one of {SEGMENTS}")
        lo, hi = self.click_delay_s
        if not 0.0 <= lo <= hi:
            raise ValueError("click_delay_s must satisfy 0 <= lo <= hi")
        if not 0.0 < self.base_ctr < 1.0:
            raise ValueError("base_ctr must be in (0, 1)")


@dataclass(frozen=True)
class _World:
    U: np.ndarray  # (n_users, d) float64 user factors
    seg: np.ndarray  # (n_users,) int segment index
    age: np.ndarray  # (n_users,) int age-bucket index
    device: np.ndarray  # (n_users,) int primary device index
    activity: np.ndarray  # (n_users,) float64, sums to 1
    V: np.ndarray  # (n_items, d) float64 item factors
    genre: np.ndarray  # (n_items,) int genre index
    bias: np.ndarray  # (n_items,) float64 item bias a[i]
    pop: np.ndarray  # (n_items,) float64 popularity in (0, 1]
    modality: np.ndarray  # (n_items,) int modality index
    content32: np.ndarray  # (n_items, media_dim) float32, unit rows
    content: np.ndarray  # same as float64 (exactly content32's values)
    aff: np.ndarray  # (n_segments, n_genres) float64 genre affinities


@dataclass
class _Block:
    """One block of traffic; request arrays are (b,) / (b, C), media arrays (m,)."""

    seq0: int
    req_ts: np.ndarray
    users: np.ndarray
    device: np.ndarray
    cands: np.ndarray
    clicked: np.ndarray
    click_ts: np.ndarray
    media_counts: np.ndarray  # (b,) media events just before each request
    media_seq0: int
    m_ts: np.ndarray
    m_user: np.ndarray
    m_item: np.ndarray
    m_emb: np.ndarray  # (m, media_dim) float32
    broken: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (dropped feature, (b, C) mask)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _build_world(cfg: SimConfig, rng: np.random.Generator) -> _World:
    d, D, ng = cfg.latent_dim, cfg.media_dim, len(GENRES)
    U = rng.normal(size=(cfg.n_users, d)) / d**0.25  # U.V has unit variance for std V rows
    seg = rng.integers(0, len(SEGMENTS), cfg.n_users)
    age = rng.integers(0, len(AGE_BUCKETS), cfg.n_users)
    device = rng.choice(len(DEVICES), cfg.n_users, p=[0.5, 0.3, 0.2])
    activity = rng.lognormal(0.0, 1.0, cfg.n_users)
    genre = rng.integers(0, ng, cfg.n_items)
    centres = rng.normal(size=(ng, d))
    V = (0.6 * centres[genre] + 0.8 * rng.normal(size=(cfg.n_items, d))) / d**0.25
    bias = rng.normal(0.0, cfg.item_bias_scale, cfg.n_items)
    pop = rng.lognormal(0.0, 1.0, cfg.n_items)
    modality = (rng.random(cfg.n_items) < 0.3).astype(np.int64)  # 30% audio
    g_dir = _unit(rng.normal(size=(ng, D)))
    proj = rng.normal(size=(d, D)) / math.sqrt(D)
    content32 = _unit(g_dir[genre] + _unit(V @ proj) + 0.5 * _unit(rng.normal(size=(cfg.n_items, D))))
    content32 = content32.astype(np.float32)
    aff = rng.normal(0.0, cfg.genre_scale, (len(SEGMENTS), ng))
    return _World(U, seg, age, device, activity / activity.sum(), V, genre, bias, pop / pop.max(),
                  modality, content32, content32.astype(np.float64), aff)


def _weighted_topk(weights: np.ndarray, k: int, rng: np.random.Generator, rows: int) -> np.ndarray:
    """(rows, k) indices sampled without replacement proportionally to ``weights`` (n,).

    Exponential-race form of the Gumbel top-k trick: item i's key is E_i / w_i, E_i ~ Exp(1);
    the k smallest keys, in increasing order, are a weighted sample without replacement.
    """
    keys = rng.standard_exponential((rows, weights.shape[0])) / weights
    top = np.argpartition(keys, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


class Simulator:
    """Generates a reproducible event stream (see the module docstring for the model)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        ss = np.random.SeedSequence(config.seed)
        self._seeds = ss.spawn(6)  # world, arrivals, users, candidates, media, clicks
        self.world = _build_world(config, np.random.default_rng(self._seeds[0]))
        w = self.world
        self._user_ids = [f"u{i}" for i in range(config.n_users)]
        self._item_ids = [f"i{i}" for i in range(config.n_items)]
        self._item_index = {s: i for i, s in enumerate(self._item_ids)}
        self._genre_names = [GENRES[g] for g in w.genre]
        self._pop_f = [round(float(x), 6) for x in w.pop]
        self._shift_seg = SEGMENTS.index(config.shift_segment)
        self._logit_base = math.log(config.base_ctr / (1.0 - config.base_ctr))

    # ----------------------------------------------------------------- ground-truth helpers
    def item_content(self, item_id: str) -> np.ndarray:
        """Content embedding of an item, shape (media_dim,), float32, unit norm."""
        return self.world.content32[self._item_index[item_id]].copy()

    def user_segment(self, user_id: str) -> str:
        """Segment name ("s0".."s3") of a user id like "u17"."""
        return SEGMENTS[int(self.world.seg[int(user_id[1:])])]

    def genre_affinity(self, segment: str) -> dict[str, float]:
        """Pre-shift genre affinities A[segment, :] (logit units)."""
        row = self.world.aff[SEGMENTS.index(segment)]
        return {g: float(a) for g, a in zip(GENRES, row)}

    def true_ctr(self, user_id: str, item_ids: Sequence[str], *, shifted: bool = False,
                 recent_items: Sequence[str] = ()) -> np.ndarray:
        """Click probability of ``item_ids`` for ``user_id``, shape (len(item_ids),) float64.

        ``shifted``: evaluate after the shift (only matters for users of ``shift_segment``);
        ``recent_items``: the user's media history H(u) (last ``media_history`` watched items).
        """
        u = int(user_id[1:])
        items = np.array([self._item_index[s] for s in item_ids], dtype=np.int64)
        hist = np.full(self.config.media_history, -1, dtype=np.int64)
        recent = [self._item_index[s] for s in recent_items][-self.config.media_history:]
        hist[: len(recent)] = recent
        sgn = -1.0 if shifted and self.world.seg[u] == self._shift_seg else 1.0
        return self._probs(np.array([u]), items[None, :], hist[None, :], np.array([sgn]))[0]

    def _probs(self, users: np.ndarray, cands: np.ndarray, hist: np.ndarray,
               sgn: np.ndarray) -> np.ndarray:
        """Click probabilities (b, C) for users (b,), candidates (b, C), history (b, K; -1 = none)."""
        w, cfg = self.world, self.config
        uv = np.einsum("bd,bcd->bc", w.U[users], w.V[cands])
        pref = cfg.uv_scale * uv + w.aff[w.seg[users][:, None], w.genre[cands]]
        logit = self._logit_base + w.bias[cands] + sgn[:, None] * pref
        if cfg.media_weight != 0.0:
            cos = np.matmul(w.content[cands], w.content[np.maximum(hist, 0)].transpose(0, 2, 1))
            cos = np.where((hist >= 0)[:, None, :], cos, -np.inf).max(axis=2)
            logit = logit + cfg.media_weight * np.where(np.isfinite(cos), cos, 0.0)
        return 1.0 / (1.0 + np.exp(-logit))

    # ----------------------------------------------------------------------------- timing
    def _shift_index(self, n_requests: int) -> int | None:
        if self.config.shift_at is None:
            return None
        k = int(round(self.config.shift_at * n_requests))
        return k if k < n_requests else None

    def shift_ts(self, n_requests: int) -> float | None:
        """Event time (unix s) from which the shift applies, or None if none in this run."""
        k = self._shift_index(n_requests)
        if k is None:
            return None
        return self._request_ts(k)

    def _fault_window(self, fault: FaultSpec, n_requests: int) -> tuple[int, int]:
        return int(round(fault.start_frac * n_requests)), int(round(fault.end_frac * n_requests))

    def faults(self, n_requests: int) -> list[dict]:
        """Ground truth of the configured faults for a run of ``n_requests`` requests.

        One dict per fault: ``kind``, ``signature`` (sorted ``name=value``), ``where``,
        ``magnitude``, ``feature``, ``start_index`` / ``end_index`` (requests, end excluded),
        ``start_ts`` (ts of the first affected request) and ``end_ts`` (ts of the first
        request after the fault; None when it lasts to the end of the run).
        """
        out = []
        for f in self.config.faults:
            lo, hi = self._fault_window(f, n_requests)
            out.append({"kind": f.kind, "signature": f.signature, "where": dict(f.where),
                        "magnitude": f.magnitude, "feature": f.feature, "start_index": lo, "end_index": hi,
                        "start_ts": self._request_ts(lo) if lo < n_requests else None,
                        "end_ts": self._request_ts(hi) if hi < n_requests else None})
        return out

    def _request_ts(self, k: int) -> float:
        """Event time of request ``k`` (0-based) of any run (arrivals do not depend on n)."""
        rng = np.random.default_rng(self._seeds[1])
        t = self.config.start_ts
        for _ in range(k // _BLOCK + 1):
            ts = np.round(t + np.cumsum(rng.exponential(1.0 / self.config.requests_per_s, _BLOCK)), 6)
            t = ts[-1]
        return float(ts[k % _BLOCK])

    # ------------------------------------------------------------------------ generation
    def _blocks(self, n_requests: int) -> Iterator[_Block]:
        cfg, w = self.config, self.world
        C, K = cfg.candidates_per_request, cfg.media_history
        r_arr, r_usr, r_cand, r_med, r_clk = (np.random.default_rng(s) for s in self._seeds[1:])
        shift_ts = self.shift_ts(n_requests)
        shift_t = math.inf if shift_ts is None else shift_ts
        log.debug("simulating %d requests (seed %d), shift_ts=%s", n_requests, cfg.seed, shift_ts)
        log_pop = np.log(w.pop)
        ring = [[-1] * K for _ in range(cfg.n_users)]  # H(u) ring buffers, -1 = empty slot
        ring_pos = [0] * cfg.n_users
        t_prev, seq, mseq = cfg.start_ts, 0, 0
        while seq < n_requests:
            B = _BLOCK
            ts = np.round(t_prev + np.cumsum(r_arr.exponential(1.0 / cfg.requests_per_s, B)), 6)
            lo = np.concatenate(([t_prev], ts[:-1]))
            users = r_usr.choice(cfg.n_users, B, p=w.activity)
            dev = np.where(r_usr.random(B) < 0.75, w.device[users], r_usr.integers(0, len(DEVICES), B))
            cands = _weighted_topk(w.pop, C, r_cand, B)
            # media events between requests (gap i precedes request i)
            counts = r_med.poisson(cfg.media_per_request, B)
            gap = np.repeat(np.arange(B), counts)
            m = gap.size
            m_ts = np.round(lo[gap] + r_med.random(m) * (ts - lo)[gap], 6)
            m_ts = m_ts[np.lexsort((m_ts, gap))]
            m_user = r_med.choice(cfg.n_users, m, p=w.activity)
            m_sgn = np.where((m_ts >= shift_t) & (w.seg[m_user] == self._shift_seg), -1.0, 1.0)
            pref = cfg.uv_scale * (w.U[m_user] @ w.V.T) + w.aff[w.seg[m_user]][:, w.genre]
            keys = log_pop + w.bias + m_sgn[:, None] * pref + r_med.gumbel(size=(m, cfg.n_items))
            m_item = np.argmax(keys, axis=1)
            noise = r_med.normal(0.0, cfg.media_noise, (m, cfg.media_dim))
            m_emb = _unit(w.content[m_item] + noise).astype(np.float32)
            # media history snapshot H(u) at each request (sequential by nature)
            hist_rows: list[list[int]] = []
            mu_l, mit_l, mi = m_user.tolist(), m_item.tolist(), 0
            for u_req, cnt in zip(users.tolist(), counts.tolist()):
                for _ in range(cnt):
                    u = mu_l[mi]
                    ring[u][ring_pos[u] % K] = mit_l[mi]
                    ring_pos[u] += 1
                    mi += 1
                hist_rows.append(ring[u_req][:])
            hist = np.array(hist_rows, dtype=np.int64).reshape(B, K)
            sgn = np.where((ts >= shift_t) & (w.seg[users] == self._shift_seg), -1.0, 1.0)
            p = self._probs(users, cands, hist, sgn)
            broken = self._apply_faults(p, seq, n_requests, users, dev, cands) if cfg.faults else []
            clicked = r_clk.random((B, C)) < p
            delay = r_clk.uniform(cfg.click_delay_s[0], cfg.click_delay_s[1], (B, C))
            click_ts = np.round(ts[:, None] + delay, 6)
            b = min(B, n_requests - seq)
            mb = int(counts[:b].sum())
            yield _Block(seq, ts[:b], users[:b], dev[:b], cands[:b], clicked[:b],
                         click_ts[:b], counts[:b], mseq, m_ts[:mb], m_user[:mb], m_item[:mb], m_emb[:mb],
                         [(name, mask[:b]) for name, mask in broken])
            t_prev, seq, mseq = float(ts[-1]), seq + B, mseq + m

    def _apply_faults(self, p: np.ndarray, seq: int, n_requests: int, users: np.ndarray, dev: np.ndarray,
                      cands: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Apply the active faults to click probabilities ``p`` (B, C) in place; returns the
        broken-feature masks (dropped feature, (B, C) bool)."""
        w = self.world
        cols = {"age_bucket": (w.age[users], AGE_BUCKETS), "device": (dev, DEVICES),
                "segment": (w.seg[users], SEGMENTS)}
        k = seq + np.arange(p.shape[0])
        broken = []
        for f in self.config.faults:
            lo, hi = self._fault_window(f, n_requests)
            mask = np.broadcast_to(((k >= lo) & (k < hi))[:, None], p.shape).copy()
            for name, value in f.where.items():
                if name == "genre":
                    mask &= w.genre[cands] == GENRES.index(value)
                else:
                    idx, names = cols[name]
                    mask &= (idx == names.index(value))[:, None]
            if f.kind == "ctr_collapse":
                p[mask] *= 1.0 - f.magnitude
            elif f.kind == "label_shift":
                p[mask] = 1.0 / (1.0 + np.exp(-(np.log(p[mask] / (1.0 - p[mask])) + f.magnitude)))
            elif mask.any():
                broken.append((f.feature, mask))
        return broken

    @staticmethod
    def _cand_features(blk: _Block, i: int, j: int, genre: str, popularity: float) -> dict[str, str | float]:
        """Candidate features of row (i, j) of a block, with broken-feature faults applied."""
        feats: dict[str, str | float] = {"genre": genre, "popularity": popularity}
        for name, mask in blk.broken:
            if mask[i, j]:
                feats.pop(name, None)
        return feats

    def _media_events(self, blk: _Block) -> list[MediaEvent]:
        """The block's media events (segment ids "m{seq}", embeddings rounded to 1e-6)."""
        w, uid, iid = self.world, self._user_ids, self._item_ids
        emb = np.round(blk.m_emb.astype(np.float64), 6).tolist()
        rows = zip(blk.m_ts.tolist(), blk.m_user.tolist(), blk.m_item.tolist(), emb)
        return [MediaEvent(user_id=uid[u], ts=t, modality=MODALITIES[w.modality[it]],
                           segment_id=f"m{blk.media_seq0 + j}", embedding=e, item_id=iid[it])
                for j, (t, u, it, e) in enumerate(rows)]

    def _contexts(self, blk: _Block) -> list[dict[str, str | float]]:
        w = self.world
        return [
            {"age_bucket": AGE_BUCKETS[w.age[u]], "device": DEVICES[d], "segment": SEGMENTS[w.seg[u]]}
            for u, d in zip(blk.users.tolist(), blk.device.tolist())
        ]

    def events(self, n_requests: int) -> Iterator[Event]:
        """Live traffic for ``n_requests`` requests, in non-decreasing ``ts`` order.

        Yields ``RecommendationRequest`` (``request_id`` "r{seq}"), one click ``Interaction``
        per clicked candidate (at request ts + delay; non-clicked candidates get no event) and
        ``MediaEvent``s. Clicks due at the same time as another event come first.
        """
        iid, gname, popf, uid = self._item_ids, self._genre_names, self._pop_f, self._user_ids
        pending: list[tuple[float, int, Interaction]] = []  # heap of (ts, order, click)
        order = 0
        for blk in self._blocks(n_requests):
            ctx = self._contexts(blk)
            cand_rows, ts_l = blk.cands.tolist(), blk.req_ts.tolist()
            clk_rows, cts_rows = blk.clicked.tolist(), blk.click_ts.tolist()
            media = self._media_events(blk)
            out: list[Event] = []
            mi = 0
            for i, t in enumerate(ts_l):
                for ev in media[mi: mi + int(blk.media_counts[i])]:
                    while pending and pending[0][0] <= ev.ts:
                        out.append(heapq.heappop(pending)[2])
                    out.append(ev)
                mi += int(blk.media_counts[i])
                while pending and pending[0][0] <= t:
                    out.append(heapq.heappop(pending)[2])
                rid, user, row = f"r{blk.seq0 + i}", uid[blk.users[i]], cand_rows[i]
                if blk.broken:
                    cands = [Candidate(item_id=iid[it], features=self._cand_features(blk, i, j, gname[it], popf[it]))
                             for j, it in enumerate(row)]
                else:
                    cands = [Candidate(item_id=iid[it], features={"genre": gname[it], "popularity": popf[it]})
                             for it in row]
                out.append(RecommendationRequest(request_id=rid, user_id=user, ts=t, features=ctx[i],
                                                 candidates=cands))
                for it, c, ct in zip(row, clk_rows[i], cts_rows[i]):
                    if c:
                        click = Interaction(user_id=user, item_id=iid[it], ts=ct, label=1, kind="click",
                                            request_id=rid)
                        heapq.heappush(pending, (ct, order, click))
                        order += 1
            yield from out
        while pending:
            yield heapq.heappop(pending)[2]

    def labelled_log(self, n_requests: int) -> Iterator[Event]:
        """Prequential log: per (request, candidate) one labelled ``Interaction`` plus media.

        Rows have ``ts`` = request ts, ``request_id=None``, ``kind`` "click" (label 1) or
        "impression" (label 0) and features = request context merged with item features.
        Uses the same draws as :meth:`events`: a row is labelled 1 iff that candidate is
        clicked there.
        """
        iid, gname, popf, uid = self._item_ids, self._genre_names, self._pop_f, self._user_ids
        for blk in self._blocks(n_requests):
            ctx = self._contexts(blk)
            media = self._media_events(blk)
            out: list[Event] = []
            mi = 0
            for i, (t, row, clk) in enumerate(zip(blk.req_ts.tolist(), blk.cands.tolist(), blk.clicked.tolist())):
                n_m = int(blk.media_counts[i])
                out.extend(media[mi: mi + n_m])
                mi += n_m
                user, c = uid[blk.users[i]], ctx[i]
                if blk.broken:
                    out.extend(
                        Interaction(user_id=user, item_id=iid[it], ts=t, label=int(y),
                                    kind="click" if y else "impression",
                                    features={**c, **self._cand_features(blk, i, j, gname[it], popf[it])})
                        for j, (it, y) in enumerate(zip(row, clk)))
                    continue
                out.extend(
                    Interaction(user_id=user, item_id=iid[it], ts=t, label=int(y),
                                kind="click" if y else "impression",
                                features={**c, "genre": gname[it], "popularity": popf[it]})
                    for it, y in zip(row, clk))
            yield from out


def write_jsonl(events: Iterable[msgspec.Struct], path: str | Path) -> int:
    """Write events to ``path`` as JSON lines (``reloop.streams.codec.encode``), compressed by
    suffix (``.gz``, ``.zst``, else plain); returns the count."""
    from reloop.ops.log_readers import write_jsonl_compressed

    return write_jsonl_compressed(events, str(path))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m reloop.ops.simulator --requests N --out log.jsonl [--labelled] [--seed S]``."""
    ap = argparse.ArgumentParser(prog="python -m reloop.ops.simulator", description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, required=True, help="number of requests to simulate")
    ap.add_argument("--out", required=True, help="output JSONL path")
    ap.add_argument("--labelled", action="store_true", help="write the labelled (prequential) log")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--media-weight", type=float, default=0.0)
    ap.add_argument("--shift-at", type=float, default=0.6, help="fraction of requests; <0 = no shift")
    args = ap.parse_args(argv)
    cfg = SimConfig(seed=args.seed, media_weight=args.media_weight,
                    shift_at=None if args.shift_at < 0 else args.shift_at)
    sim = Simulator(cfg)
    t0 = time.perf_counter()
    stream = sim.labelled_log(args.requests) if args.labelled else sim.events(args.requests)
    n = write_jsonl(stream, args.out)
    shift = sim.shift_ts(args.requests)
    print(f"wrote {n} events ({args.requests} requests, {'labelled' if args.labelled else 'live'}) "
          f"to {args.out} in {time.perf_counter() - t0:.2f}s; shift_ts={shift}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
