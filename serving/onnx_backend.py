"""In-process ONNX Runtime backend (the embedded default).

One InferenceSession per model, one intra-op thread each: an auction is a handful of
rows, so threading costs more than it saves, and the decision service scales by
processes instead. No torch or mlflow is imported here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.base import AuctionInputs, AuctionScores
from serving.errors import BackendUnavailable


@dataclass(frozen=True)
class ModelFile:
    name: str        # ctr | fraud | shading
    version: str
    path: Path


# Landscapes remembered per shading session: the shading model's input is the auction's
# context (publisher, placement, device, floor, hour), which repeats across auctions far
# more than the fraud and CTR inputs (which carry the user, device and IP), so its
# output is looked up instead of recomputed. Exact: the same session and the same input
# bytes give the same output. Cleared when full (no LRU bookkeeping per auction).
SHADING_MEMO = 4096


class _Session:
    def __init__(self, path: Path, *, memo: int = 0) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        first = self.sess.get_inputs()[0]
        self.input = first.name
        self.output = self.sess.get_outputs()[0].name
        self._memo: dict[bytes, np.ndarray] = {}
        self._memo_size = memo
        width = first.shape[-1] if first.shape else None
        if first.type == "tensor(float)" and isinstance(width, int):
            # One run on zeros now (as Triton's model warm-up does): ORT plans and allocates
            # on a session's first run, which otherwise fell on the first auction.
            self.sess.run([self.output], {self.input: np.zeros((1, width), np.float32)})

    def run(self, x: np.ndarray) -> np.ndarray:
        if not self._memo_size:
            return self.sess.run([self.output], {self.input: x})[0]
        key = x.tobytes()
        out = self._memo.get(key)
        if out is None:
            out = self.sess.run([self.output], {self.input: x})[0]
            out.flags.writeable = False          # shared by every auction that hits it
            if len(self._memo) >= self._memo_size:
                self._memo.clear()
            self._memo[key] = out
        return out


class OnnxBackend:
    """Scores an auction with in-process sessions; models can be swapped atomically."""

    def __init__(self, models: list[ModelFile], *, shading_memo: int | None = None) -> None:
        """``shading_memo``: landscapes remembered per shading session (default
        :data:`SHADING_MEMO`; 0 turns the memo off)."""
        self._shading_memo = SHADING_MEMO if shading_memo is None else shading_memo
        self._lock = threading.Lock()
        # Sessions and versions change together, in one assignment, so a call scoring
        # during a swap reports the version that actually scored it.
        self._state: tuple[dict[str, _Session], dict[str, str]] = ({}, {})
        for m in models:
            self.swap(m)
        if "ctr" not in self._state[0]:
            raise BackendUnavailable("the ONNX backend needs a ctr model")

    def swap(self, model: ModelFile) -> None:
        """Load a new version, then replace the old one in a single assignment."""
        session = _Session(model.path,
                           memo=self._shading_memo if model.name == "shading" else 0)
        with self._lock:
            sessions, versions = self._state
            self._state = ({**sessions, model.name: session}, {**versions, model.name: model.version})

    def score(self, inputs: AuctionInputs) -> AuctionScores:
        sessions, versions = self._state               # one consistent snapshot
        if "ctr" not in sessions:
            raise BackendUnavailable("the ONNX backend is closed")
        pctr = sessions["ctr"].run(inputs.ctr)         # (K,)
        fraud = None
        if inputs.fraud is not None and "fraud" in sessions:
            fraud = float(sessions["fraud"].run(inputs.fraud)[0])
        shading = None
        if inputs.shading is not None and "shading" in sessions:
            shading = sessions["shading"].run(inputs.shading)
        return AuctionScores(pctr=pctr, fraud=fraud, shading=shading, versions=versions)

    def versions(self) -> dict[str, str]:
        return dict(self._state[1])

    def close(self) -> None:
        with self._lock:
            self._state = ({}, self._state[1])


__all__ = ["SHADING_MEMO", "ModelFile", "OnnxBackend"]
