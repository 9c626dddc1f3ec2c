"""onnxruntime scorer for exported slow models (no torch import: scoring workers stay light).

An :class:`OnnxScorer` wraps one immutable model version. It is tuned for a stream consumer
that scores small batches on a core it shares with the rest of the pipeline: one intra-op
thread by default, no inter-op parallelism, sequential execution, all graph optimisations, and
no spin-waiting (``session.intra_op.allow_spinning = 0``) so idle threads do not burn CPU.

Threading per batch size: a scorer may hold a second session with more intra-op threads and
use it for batches of at least ``large_batch_rows`` rows (``large_batch_threads``; 1 = one
session only). The defaults, :data:`LARGE_BATCH_THREADS` and :data:`LARGE_BATCH_ROWS`, come
from ``bench/scoring.py``'s threading table (docs/slow_model.md).

Hot swap is done by the owner: build a new scorer (load + warm up) off the request path, then
replace the reference between batches; a scorer is never mutated after construction.
``score`` is safe to call from several threads (onnxruntime sessions are thread-safe).
"""

from __future__ import annotations

import logging

import msgspec
import numpy as np
import onnxruntime as ort

from reloop.models.features import FeatureSpec, check_inputs, pad_dense

__all__ = ["OnnxScorer", "make_session_options", "SPEC_METADATA_KEY", "LARGE_BATCH_THREADS", "LARGE_BATCH_ROWS"]

logger = logging.getLogger(__name__)

#: ONNX ``metadata_props`` key holding the JSON :class:`FeatureSpec` (written by the exporter).
SPEC_METADATA_KEY = "reloop.feature_spec"

#: Intra-op threads of the large-batch session (1 = no second session), from measurement.
LARGE_BATCH_THREADS = 1
#: Batches of at least this many rows use the large-batch session when it exists.
LARGE_BATCH_ROWS = 512


def make_session_options(intra_op_num_threads: int = 1) -> ort.SessionOptions:
    """Session options for a stream consumer (see module docstring)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(intra_op_num_threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return options


class OnnxScorer:
    """Scores encoded rows with one ONNX model version.

    Args:
        onnx_bytes: the serialised model (inputs ``tokens``/``dense``, outputs ``prob``/``hidden``).
        version: model version label carried into recommendations and error records.
        spec: the feature spec; read from the model's metadata when omitted. If both are present
            they must agree.
        intra_op_num_threads: onnxruntime intra-op threads (1 suits one worker per core).
        large_batch_threads: intra-op threads for batches of ``large_batch_rows`` rows or more;
            a second session is built only if this exceeds ``intra_op_num_threads``.
        large_batch_rows: the batch size from which the large-batch session is used.
        warmup: run one dummy batch at construction so the first real request is not slow.

    Raises:
        ValueError: if no spec is available, the specs disagree, or the graph's signature does
            not match the spec. onnxruntime raises its own errors for bytes that are not ONNX.
    """

    def __init__(
        self,
        onnx_bytes: bytes,
        *,
        version: str,
        spec: FeatureSpec | None = None,
        intra_op_num_threads: int = 1,
        large_batch_threads: int = LARGE_BATCH_THREADS,
        large_batch_rows: int = LARGE_BATCH_ROWS,
        warmup: bool = True,
    ) -> None:
        self.version = version
        self._session = ort.InferenceSession(
            onnx_bytes,
            sess_options=make_session_options(intra_op_num_threads),
            providers=["CPUExecutionProvider"],
        )
        self.large_batch_rows = int(large_batch_rows)
        self._large_session: ort.InferenceSession | None = None
        if large_batch_threads > intra_op_num_threads:
            self._large_session = ort.InferenceSession(
                onnx_bytes, sess_options=make_session_options(large_batch_threads),
                providers=["CPUExecutionProvider"])
        embedded = self._session.get_modelmeta().custom_metadata_map.get(SPEC_METADATA_KEY)
        embedded_spec = msgspec.json.decode(embedded, type=FeatureSpec) if embedded else None
        if spec is None and embedded_spec is None:
            raise ValueError("no FeatureSpec given and none embedded in the ONNX model")
        if spec is not None and embedded_spec is not None and spec != embedded_spec:
            raise ValueError(f"spec {spec} disagrees with the model's embedded spec {embedded_spec}")
        self.spec: FeatureSpec = spec if spec is not None else embedded_spec  # type: ignore[assignment]
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        outputs = {o.name: o.shape for o in self._session.get_outputs()}
        if set(inputs) != {"tokens", "dense"} or set(outputs) != {"prob", "hidden"}:
            raise ValueError(f"unexpected ONNX signature: inputs {list(inputs)}, outputs {list(outputs)}")
        if inputs["tokens"][1] != self.spec.max_tokens or inputs["dense"][1] != self.spec.dense_width:
            raise ValueError(f"ONNX inputs {inputs} do not match spec {self.spec}")
        hidden_dim = outputs["hidden"][1]
        if not isinstance(hidden_dim, int):
            raise ValueError(f"ONNX hidden output has no static width: {outputs['hidden']}")
        self.hidden_dim: int = hidden_dim
        self._output_names = ["prob", "hidden"]
        if warmup:
            for rows in (1, self.large_batch_rows) if self._large_session is not None else (1,):
                self.score(
                    np.zeros((rows, self.spec.max_tokens), dtype=np.int64),
                    np.zeros((rows, self.spec.n_dense), dtype=np.float32),
                )
        logger.info("loaded model %s (T=%d, D=%d, H=%d)", version, self.spec.max_tokens, self.spec.n_dense, self.hidden_dim)

    def score(self, tokens: np.ndarray, dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score ``n`` rows.

        Args:
            tokens: ``(n, T)`` int64 ids in ``[0, n_buckets)`` (from :class:`FeatureEncoder`).
            dense: ``(n, D)`` float32 raw dense values (``(n, max(1, D))`` is accepted too).

        Returns:
            ``prob`` ``(n,)`` float64 click probability and ``hidden`` ``(n, H)`` float32.

        Raises:
            ValueError: on wrong shapes or out-of-range token ids.
        """
        tokens, dense = check_inputs(tokens, dense, self.spec)
        if tokens.shape[0] == 0:
            return np.zeros(0, dtype=np.float64), np.zeros((0, self.hidden_dim), dtype=np.float32)
        session = self._session
        if self._large_session is not None and tokens.shape[0] >= self.large_batch_rows:
            session = self._large_session
        prob, hidden = session.run(self._output_names, {"tokens": tokens, "dense": pad_dense(dense, self.spec)})
        return prob.astype(np.float64), hidden

    def __repr__(self) -> str:
        return f"OnnxScorer(version={self.version!r}, hidden_dim={self.hidden_dim}, spec={self.spec!r})"
