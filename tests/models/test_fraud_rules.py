"""GIVT rules: numpy semantics, the ONNX graph that appends them, parity with NaN rows."""

from __future__ import annotations

import numpy as np
import pytest

from features.vectorize import FRAUD_FEATURES
from models.fraud_rules import (
    RULE_COLUMNS,
    RuleHits,
    append_rules,
    combine,
    rule_column_indices,
    rules_for_requests,
    rules_from_matrix,
)
from simulator.bots import BUILTIN_CRAWLER_USER_AGENTS
from simulator.datacenters import DATACENTER_CIDRS, sample_ips

HUMAN_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36")
F = len(FRAUD_FEATURES)
I_UA, I_DC = rule_column_indices()


def _matrix(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fraud-shaped matrix whose label depends on counts and the rule columns."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(3.0, size=(n, F)).astype(np.float32)
    x[:, I_UA] = rng.random(n) < 0.05
    x[:, I_DC] = rng.random(n) < 0.05
    logit = 0.6 * x[:, 0] - 0.4 * x[:, 5] + 3.0 * (x[:, I_UA] + x[:, I_DC]) - 2.0
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    return x, y.astype(np.float64)


@pytest.fixture(scope="module")
def booster_and_graph() -> tuple[object, object]:
    import lightgbm as lgb

    from training.fraud import export_onnx

    x, y = _matrix(4000)
    booster = lgb.train({"objective": "binary", "num_leaves": 15, "verbose": -1,
                         "num_threads": 1, "deterministic": True, "seed": 1},
                        lgb.Dataset(x, y, feature_name=FRAUD_FEATURES), num_boost_round=40)
    return booster, export_onnx(booster)


def test_declared_crawlers_and_datacenter_ips_hit_and_browsers_do_not() -> None:
    rng = np.random.default_rng(3)
    dc = list(sample_ips(rng, DATACENTER_CIDRS, 20))
    uas = [*BUILTIN_CRAWLER_USER_AGENTS, *[HUMAN_UA] * 20, *[HUMAN_UA] * 20]
    ips = [*["81.2.69.160"] * len(BUILTIN_CRAWLER_USER_AGENTS), *dc, *["81.2.69.161"] * 20]
    hits = rules_for_requests(ips, uas, shared_data=None)
    n_crawl = len(BUILTIN_CRAWLER_USER_AGENTS)
    assert hits.crawler_ua[:n_crawl].all()
    assert not hits.crawler_ua[n_crawl:].any()
    assert hits.datacenter_ip[n_crawl:n_crawl + 20].all()
    assert not hits.datacenter_ip[n_crawl + 20:].any()
    assert hits.any.sum() == n_crawl + 20
    assert hits.counts()["any"] == n_crawl + 20


def test_rules_from_matrix_reads_the_rule_columns_and_ignores_nan() -> None:
    x = np.zeros((4, F), dtype=np.float32)
    x[1, FRAUD_FEATURES.index(RULE_COLUMNS[0])] = 1.0
    x[2, FRAUD_FEATURES.index(RULE_COLUMNS[1])] = 1.0
    x[3] = np.nan
    assert rules_from_matrix(x).any.tolist() == [False, True, True, False]


def test_combine_is_one_on_a_hit_and_the_model_otherwise() -> None:
    p = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    hits = RuleHits(np.array([False, True, False]), np.array([False, False, True]))
    out = combine(p, hits)
    assert out.tolist() == pytest.approx([0.1, 1.0, 1.0])
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        combine(p, np.array([True]))
    with pytest.raises(ValueError, match="two"):
        RuleHits(np.zeros(2, dtype=bool), np.zeros(3, dtype=bool))


def test_matrix_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="fraud matrix"):
        rules_from_matrix(np.zeros((2, F - 1), dtype=np.float32))


def test_exported_graph_has_the_serving_names(booster_and_graph: tuple[object, object]) -> None:
    _, proto = booster_and_graph
    graph = proto.graph  # type: ignore[attr-defined]
    assert [i.name for i in graph.input] == ["fraud_features"]
    assert [o.name for o in graph.output] == ["p_fraud"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == F


def test_onnx_parity_with_lightgbm_and_rules_including_nan_rows(
        booster_and_graph: tuple[object, object]) -> None:
    from models.lgbm_onnx import onnx_predict
    from training.fraud import native_scores, parity, with_nan_rows

    booster, proto = booster_and_graph
    x = with_nan_rows(_matrix(3000, seed=9)[0], n=200)
    check = parity(booster, proto, x)  # type: ignore[arg-type]
    assert check["within_1e-05"] >= 0.999, check
    assert check["within_0.001"] == 1.0, check
    # The NaN rows alone, so an all-NaN failure cannot hide among 3000 finite rows.
    nan_rows = x[-400:]
    got = onnx_predict(proto, nan_rows)  # type: ignore[arg-type]
    _, ref = native_scores(booster, nan_rows)
    assert np.all(np.isfinite(got))
    assert np.max(np.abs(got - ref)) <= 1e-5


def test_graph_answers_one_for_rule_hits(booster_and_graph: tuple[object, object]) -> None:
    from models.lgbm_onnx import onnx_predict

    _, proto = booster_and_graph
    x = np.zeros((3, F), dtype=np.float32)
    x[1, I_UA] = 1.0
    x[2, I_DC] = 1.0
    p = onnx_predict(proto, x)  # type: ignore[arg-type]
    assert p[1] == 1.0 and p[2] == 1.0
    assert p[0] < 1.0


def test_append_rules_needs_the_named_output(booster_and_graph: tuple[object, object]) -> None:
    _, proto = booster_and_graph
    with pytest.raises(ValueError, match="single output"):
        append_rules(proto, model_output="p_model", output_name="p")  # type: ignore[arg-type]
