"""BentoML backend pieces that need no server: wire codec, aliases, models, client errors.

The helpers that build small ONNX models here are shared with ``test_bento.py``.
"""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper

from adplatform.errors import ConfigError
from serving.base import AuctionInputs, ModelBackend
from serving.bento.client import BentoBackend
from serving.bento.codec import WireAuction, WireTensor, decode_array, encode_array
from serving.bento.models import AuctionModels, InvalidAuction, open_model, parse_aliases
from serving.errors import BackendTimeout, BackendUnavailable, ServingError
from serving.onnx_backend import ModelFile, OnnxBackend

F_CTR, F_FRAUD, F_SHADING, P_SHADING = 32, 12, 8, 3


def linear_onnx(input_name: str, output_name: str, n_features: int, n_out: int, *, seed: int,
                squeeze: bool, sigmoid: bool) -> onnx.ModelProto:
    """``sigmoid?(x @ W + b)``: (N, F) -> (N,) when ``squeeze`` else (N, n_out)."""
    rng = np.random.default_rng(seed)
    w = (rng.normal(size=(n_features, n_out)) * 0.3).astype(np.float32)
    b = rng.normal(size=(n_out,)).astype(np.float32)
    inits = [helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.ravel()),
             helper.make_tensor("b", TensorProto.FLOAT, b.shape, b)]
    nodes = [helper.make_node("MatMul", [input_name, "W"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["z"])]
    last = "z"
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["z"], ["s"]))
        last = "s"
    if squeeze:
        inits.append(helper.make_tensor("axis", TensorProto.INT64, [1], [1]))
        nodes.append(helper.make_node("Squeeze", [last, "axis"], [output_name]))
        out_shape: list[int | None] = [None]
    else:
        nodes.append(helper.make_node("Identity", [last], [output_name]))
        out_shape = [None, n_out]
    graph = helper.make_graph(
        nodes, output_name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def fraud_onnx(seed: int = 2) -> onnx.ModelProto:
    return linear_onnx("fraud_features", "p_fraud", F_FRAUD, 1, seed=seed, squeeze=True,
                       sigmoid=True)


def shading_onnx(seed: int = 3) -> onnx.ModelProto:
    return linear_onnx("shading_features", "landscape", F_SHADING, P_SHADING, seed=seed,
                       squeeze=False, sigmoid=False)


def ctr_linear_onnx(seed: int = 1) -> onnx.ModelProto:
    return linear_onnx("ctr_features", "pctr", F_CTR, 1, seed=seed, squeeze=True, sigmoid=True)


def auction(rng: np.random.Generator, k: int = 20, *, fraud: bool = True,
            shading: bool = True) -> AuctionInputs:
    ctr = rng.normal(size=(k, F_CTR)).astype(np.float32)
    ctr[rng.random(size=ctr.shape) < 0.05] = np.nan          # missing features travel as NaN
    return AuctionInputs(
        ctr=ctr,
        fraud=rng.normal(size=(1, F_FRAUD)).astype(np.float32) if fraud else None,
        shading=rng.normal(size=(k, F_SHADING)).astype(np.float32) if shading else None)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def model_files(tmp_path: Path) -> dict[str, Path]:
    return {"ctr": save(ctr_linear_onnx(), tmp_path / "ctr.onnx"),
            "fraud": save(fraud_onnx(), tmp_path / "fraud.onnx"),
            "shading": save(shading_onnx(), tmp_path / "shading.onnx")}


# -- wire codec ------------------------------------------------------------------------

def test_codec_round_trip_is_bit_exact_with_nan() -> None:
    x = np.array([[1.0, np.nan, -0.0], [np.inf, 1e-38, 3.4e38]], dtype=np.float32)
    wire = encode_array(x)
    back = decode_array(**wire)
    assert back.dtype == np.float32
    assert back.tobytes() == x.tobytes()
    assert WireTensor.model_validate(wire).array.tobytes() == x.tobytes()


def test_codec_rejects_bad_tensors_with_a_clear_reason() -> None:
    data = base64.b64encode(np.zeros(6, np.float32).tobytes()).decode()
    with pytest.raises(ValueError, match="needs 28 bytes"):
        decode_array([7], data)
    with pytest.raises(ValueError, match="1 or 2 dimensions"):
        decode_array([1, 2, 3], data)
    with pytest.raises(ValueError, match="base64"):
        decode_array([6], "not base64!")
    with pytest.raises(ValueError, match="negative"):
        decode_array([-1, 2], data)
    with pytest.raises(ValueError, match="needs"):
        WireAuction.model_validate({"ctr": {"shape": [2, 2], "data": data}})


# -- aliases ---------------------------------------------------------------------------

def test_aliases_default_to_champion_and_can_be_set_per_model() -> None:
    assert parse_aliases(None) == {"ctr": "champion", "fraud": "champion", "shading": "champion"}
    assert parse_aliases("challenger")["fraud"] == "challenger"
    assert parse_aliases("challenger, fraud=champion") == {
        "ctr": "challenger", "fraud": "champion", "shading": "challenger"}
    with pytest.raises(ConfigError, match="unknown model 'cvr'"):
        parse_aliases("cvr=champion")
    with pytest.raises(ConfigError, match="empty alias"):
        parse_aliases("ctr=")


# -- models ----------------------------------------------------------------------------

def _models(files: dict[str, Path]) -> AuctionModels:
    return AuctionModels({n: open_model(n, "champion", "1", p) for n, p in files.items()})


def test_models_score_as_the_in_process_backend(model_files: dict[str, Path]) -> None:
    models = _models(model_files)
    reference = OnnxBackend([ModelFile(n, "1", p) for n, p in model_files.items()])
    rng = np.random.default_rng(0)
    for a in [auction(rng), auction(rng, 1, fraud=False), auction(rng, 5, shading=False)]:
        got, want = models.score(a), reference.score(a)
        np.testing.assert_array_equal(got.pctr, want.pctr)
        assert got.fraud == want.fraud
        if want.shading is None:
            assert got.shading is None
        else:
            np.testing.assert_array_equal(got.shading, want.shading)
        assert got.versions == want.versions


def test_score_many_stacks_auctions_and_matches_one_by_one(model_files: dict[str, Path]) -> None:
    models = _models(model_files)
    rng = np.random.default_rng(1)
    batch = [auction(rng, 20), auction(rng, 3, fraud=False), auction(rng, 1, shading=False),
             auction(rng, 7, fraud=False, shading=False), auction(rng, 20)]
    for one, many in zip([models.score(a) for a in batch], models.score_many(batch), strict=True):
        np.testing.assert_allclose(many.pctr, one.pctr, atol=1e-6)
        assert (many.fraud is None) == (one.fraud is None)
        if one.fraud is not None and many.fraud is not None:
            assert abs(many.fraud - one.fraud) < 1e-6
        if one.shading is None or many.shading is None:
            assert one.shading is None and many.shading is None
        else:
            np.testing.assert_allclose(many.shading, one.shading, atol=1e-5)
    assert models.score_many([]) == []


def test_models_need_ctr_and_skip_absent_fraud_and_shading(model_files: dict[str, Path]) -> None:
    with pytest.raises(BackendUnavailable, match="ctr"):
        AuctionModels({"fraud": open_model("fraud", "champion", "1", model_files["fraud"])})
    only_ctr = _models({"ctr": model_files["ctr"]})
    scores = only_ctr.score(auction(np.random.default_rng(2)))
    assert scores.fraud is None and scores.shading is None
    assert scores.versions == {"ctr": "1"}


def test_models_reject_auctions_that_do_not_fit(model_files: dict[str, Path]) -> None:
    models = _models(model_files)
    rng = np.random.default_rng(3)
    good = auction(rng, 4)
    with pytest.raises(InvalidAuction, match="ctr has 5 features"):
        models.score(AuctionInputs(ctr=np.zeros((4, 5), np.float32)))
    with pytest.raises(InvalidAuction, match="fraud must be one row"):
        models.score(AuctionInputs(ctr=good.ctr, fraud=np.zeros((2, F_FRAUD), np.float32)))
    with pytest.raises(InvalidAuction, match=r"shading has 3 rows; expected 1 \(per auction\) or 4"):
        models.score(AuctionInputs(ctr=good.ctr, shading=np.zeros((3, F_SHADING), np.float32)))
    with pytest.raises(InvalidAuction, match="matrix"):
        models.score(AuctionInputs(ctr=np.zeros(F_CTR, np.float32)))


def test_model_with_wrong_tensor_names_is_refused(tmp_path: Path) -> None:
    path = save(linear_onnx("x", "y", 4, 1, seed=0, squeeze=True, sigmoid=True), tmp_path / "m.onnx")
    with pytest.raises(ServingError, match="contract"):
        open_model("ctr", "champion", "1", path)


def test_service_is_ready_only_with_models_loaded() -> None:
    from serving.bento.service import AuctionService

    inner = cast(Any, AuctionService).inner          # the plain class under @bentoml.service
    instance = inner.__new__(inner)
    instance._models = None
    assert instance.__is_ready__() is False


# -- client ----------------------------------------------------------------------------

def _scores_json(inputs: AuctionInputs) -> dict[str, object]:
    return {"pctr": encode_array(np.full(len(inputs.ctr), 0.25, np.float32)), "p_fraud": 0.5,
            "landscape": None, "versions": {"ctr": "4"}}


def test_client_sends_one_request_per_auction_and_decodes_scores() -> None:
    seen: list[httpx.Request] = []
    rng = np.random.default_rng(4)
    inputs = auction(rng, 6)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = orjson.loads(request.content)
        sent = decode_array(**body["auction"]["ctr"])
        assert sent.tobytes() == inputs.ctr.tobytes()      # NaNs included, bit for bit
        return httpx.Response(200, json=_scores_json(inputs))

    backend = BentoBackend("127.0.0.1:3000/", transport=httpx.MockTransport(handler))
    assert isinstance(backend, ModelBackend)
    scores = backend.score(inputs)
    assert len(seen) == 1
    assert str(seen[0].url) == "http://127.0.0.1:3000/score_auction"
    np.testing.assert_array_equal(scores.pctr, np.full(6, 0.25, np.float32))
    assert scores.fraud == 0.5 and scores.shading is None and scores.versions == {"ctr": "4"}


def test_batched_client_posts_a_list_of_one_auction() -> None:
    inputs = auction(np.random.default_rng(5), 3)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/score_auctions"
        assert len(orjson.loads(request.content)["auctions"]) == 1
        return httpx.Response(200, json=[_scores_json(inputs)])

    backend = BentoBackend("http://bento:3000", batched=True,
                           transport=httpx.MockTransport(handler))
    assert backend.score(inputs).versions == {"ctr": "4"}


@pytest.mark.parametrize(("failure", "error"), [
    (httpx.ConnectError("refused"), BackendUnavailable),
    (httpx.RemoteProtocolError("server disconnected"), BackendUnavailable),
    (httpx.ReadError("reset"), BackendUnavailable),
    (httpx.ConnectTimeout("connect"), BackendTimeout),
    (httpx.ReadTimeout("read"), BackendTimeout),
    (httpx.PoolTimeout("pool"), BackendTimeout),
])
def test_client_maps_transport_failures(failure: Exception, error: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    backend = BentoBackend("http://bento:3000", transport=httpx.MockTransport(handler))
    with pytest.raises(error):
        backend.score(auction(np.random.default_rng(6), 2))


@pytest.mark.parametrize(("status", "body", "error", "match"), [
    (503, b"overloaded", BackendUnavailable, "503"),
    (504, b"slow", BackendTimeout, "504"),
    (400, b'[{"error": "ctr has 5 features"}]', ServingError, "ctr has 5 features"),
    (500, b"boom", ServingError, "500"),
    (200, b"not json", ServingError, "not JSON"),
    (200, b'{"pctr": 1}', ServingError, "malformed"),
])
def test_client_maps_http_failures(status: int, body: bytes, error: type[Exception],
                                   match: str) -> None:
    backend = BentoBackend("http://bento:3000", transport=httpx.MockTransport(
        lambda request: httpx.Response(status, content=body)))
    with pytest.raises(error, match=match):
        backend.score(auction(np.random.default_rng(7), 2))


def test_client_checks_the_answer_has_one_pctr_per_candidate() -> None:
    inputs = auction(np.random.default_rng(8), 5)
    wrong = {**_scores_json(inputs), "pctr": encode_array(np.zeros(4, np.float32))}
    backend = BentoBackend("http://bento:3000", transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json=wrong)))
    with pytest.raises(ServingError, match="for 5 candidates"):
        backend.score(inputs)


def test_client_reports_an_error_of_its_batched_auction() -> None:
    backend = BentoBackend("http://bento:3000", batched=True, transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json=[{"pctr": encode_array(np.zeros(0)),
                                                   "versions": {}, "error": "bad rows"}])))
    with pytest.raises(ServingError, match="bad rows"):
        backend.score(auction(np.random.default_rng(9), 2))


def test_client_refused_connection_is_unavailable_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]            # closed again: nobody listens there
    backend = BentoBackend(f"http://127.0.0.1:{port}", timeout_s=5.0)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable):
        backend.score(auction(np.random.default_rng(10), 2))
    assert time.monotonic() - t0 < 0.5
    backend.close()


def test_client_times_out_on_a_server_that_never_answers() -> None:
    with socket.socket() as silent:                      # accepts connections, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        backend = BentoBackend(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.05)
        t0 = time.monotonic()
        with pytest.raises(BackendTimeout, match="50 ms"):
            backend.score(auction(np.random.default_rng(11), 2))
        assert time.monotonic() - t0 < 0.5
        backend.close()


def test_closed_client_is_unavailable() -> None:
    backend = BentoBackend("http://bento:3000", transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json={})))
    backend.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        backend.versions()


def test_client_rejects_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        BentoBackend("http://bento:3000", timeout_s=0)
