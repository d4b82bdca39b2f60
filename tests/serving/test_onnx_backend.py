"""The in-process ONNX backend: scores equal the sessions' own outputs, and the shading
landscape memo is exact, per model version and bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from serving import onnx_backend
from serving.onnx_backend import ModelFile, OnnxBackend

from .test_triton_repository import (
    F_SHADING,
    P_SHADING,
    contract_models,
    linear_onnx,
    random_auction,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    return {**contract_models(folder),
            "shading2": linear_onnx(folder / "shading-2.onnx", "shading_features", "landscape",
                                    F_SHADING, P_SHADING, 4, vector=False)}


def _direct(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _backend(models: dict[str, Path]) -> OnnxBackend:
    return OnnxBackend([ModelFile(n, "1", models[n]) for n in ("ctr", "fraud", "shading")])


def test_scores_equal_each_sessions_output(models: dict[str, Path]) -> None:
    backend = _backend(models)
    rng = np.random.default_rng(0)
    for _ in range(5):
        inputs = random_auction(rng)
        scores = backend.score(inputs)
        np.testing.assert_array_equal(scores.pctr, _direct(models["ctr"], inputs.ctr))
        assert scores.shading is not None and inputs.shading is not None
        np.testing.assert_array_equal(scores.shading, _direct(models["shading"], inputs.shading))
    assert scores.versions == {"ctr": "1", "fraud": "1", "shading": "1"}


def test_the_shading_memo_is_exact_per_version_and_bounded(
        models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_backend, "SHADING_MEMO", 3)
    backend = _backend(models)
    rng = np.random.default_rng(1)
    auctions = [random_auction(rng) for _ in range(5)]
    first = [backend.score(a).shading for a in auctions]
    for a, land in zip(auctions * 3, first * 3, strict=True):   # hits and refills, same bits
        got = backend.score(a).shading
        assert got is not None and a.shading is not None
        np.testing.assert_array_equal(got, land)
        np.testing.assert_array_equal(got, _direct(models["shading"], a.shading))
        assert not got.flags.writeable                           # shared: nobody may edit it
    session = backend._state[0]["shading"]
    assert 0 < len(session._memo) <= 3
    # A new version answers with its own model, not the old one's remembered landscapes.
    backend.swap(ModelFile("shading", "2", models["shading2"]))
    a = auctions[0]
    assert a.shading is not None
    got = backend.score(a).shading
    assert got is not None and first[0] is not None and not np.array_equal(got, first[0])
    np.testing.assert_array_equal(got, _direct(models["shading2"], a.shading))
    assert backend.score(a).versions["shading"] == "2"
    # The CTR and fraud models see new users, devices and IPs: nothing is remembered.
    assert not backend._state[0]["ctr"]._memo and not backend._state[0]["fraud"]._memo


def test_the_shading_memo_can_be_turned_off(models: dict[str, Path]) -> None:
    backend = OnnxBackend([ModelFile(n, "1", models[n]) for n in ("ctr", "fraud", "shading")],
                          shading_memo=0)
    a = random_auction(np.random.default_rng(2))
    assert a.shading is not None
    for _ in range(3):
        got = backend.score(a).shading
        assert got is not None
        np.testing.assert_array_equal(got, _direct(models["shading"], a.shading))
    assert not backend._state[0]["shading"]._memo


def test_each_session_runs_once_when_loaded(models: dict[str, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # ORT plans and allocates on a session's first run: a load (and a hot swap) pays it,
    # not the first auction; the warm-up run leaves the landscape memo empty.
    runs: list[str] = []

    class Counting(ort.InferenceSession):
        def run(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            runs.append(self._model_path)
            return super().run(*args, **kwargs)

    monkeypatch.setattr(onnx_backend.ort, "InferenceSession", Counting)
    backend = _backend(models)
    assert sorted(runs) == sorted(str(models[n]) for n in ("ctr", "fraud", "shading"))
    sessions, _ = backend._state
    assert sessions["shading"]._memo == {}
    backend.score(random_auction(np.random.default_rng(0), 3))
    assert len(runs) == 6
