"""General-IVT rules, and their combination with the fraud model's probability.

Two general invalid-traffic (GIVT) rules, in the MRC sense of traffic that list-based
filtration identifies without analytics:

* a declared crawler user agent (the public crawler-user-agents list) -> invalid;
* an IP inside a published data-centre range -> invalid.

Both signals come from :mod:`features.ivt` and are also columns of the fraud feature
vector (``ua_crawler`` and ``dc_ip`` in :data:`features.vectorize.FRAUD_FEATURES`), so
the rules read the very matrix the model scores: serving needs no second input.

:func:`combine` gives ``p = max(p_model, hit)``: a rule hit is certainly invalid (1.0),
otherwise the model decides. :func:`append_rules` adds the same combination to the
exported ONNX graph, so every serving backend (in-process ONNX Runtime, Triton,
BentoML) answers the combined ``p_fraud`` and the decision engine only compares it with
the threshold recorded on the model version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper

from features.ivt import is_crawler, is_datacenter
from features.vectorize import FRAUD_FEATURES

#: The fraud-matrix columns each rule reads, in :data:`RULE_NAMES` order.
RULE_COLUMNS: tuple[str, ...] = ("ua_crawler", "dc_ip")
RULE_NAMES: tuple[str, ...] = ("crawler_ua", "datacenter_ip")
# The columns hold 0.0 / 1.0; anything above one half is a hit, NaN is not.
_HIT = 0.5


@dataclass(frozen=True)
class RuleHits:
    """Which rule fired on each of N requests (bool arrays of shape (N,))."""

    crawler_ua: np.ndarray
    datacenter_ip: np.ndarray

    def __post_init__(self) -> None:
        if self.crawler_ua.shape != self.datacenter_ip.shape or self.crawler_ua.ndim != 1:
            raise ValueError(f"rule hits must be two (N,) arrays, got shapes "
                             f"{self.crawler_ua.shape} and {self.datacenter_ip.shape}")

    @property
    def any(self) -> np.ndarray:
        """(N,) bool: at least one rule fired."""
        return np.asarray(self.crawler_ua | self.datacenter_ip)

    def __len__(self) -> int:
        return int(self.crawler_ua.shape[0])

    def counts(self) -> dict[str, int]:
        return {"crawler_ua": int(self.crawler_ua.sum()),
                "datacenter_ip": int(self.datacenter_ip.sum()), "any": int(self.any.sum())}


def rules_for_requests(ips: Sequence[str], uas: Sequence[str],
                       shared_data: Path | None = None) -> RuleHits:
    """Evaluate the rules on raw request fields (the lists of :mod:`features.ivt`).

    Each distinct user agent and IP is looked up once: batches repeat them a lot, and
    the crawler pattern list costs about a millisecond a user agent.
    """
    if len(ips) != len(uas):
        raise ValueError(f"{len(ips)} ips but {len(uas)} user agents")
    ua_codes, ua_values = pd.factorize(pd.Series(list(uas), dtype=object).fillna(""))
    ip_codes, ip_values = pd.factorize(pd.Series(list(ips), dtype=object).fillna(""))
    crawler = np.asarray(is_crawler([str(u) for u in ua_values], shared_data), dtype=bool)
    datacenter = np.asarray(is_datacenter([str(i) for i in ip_values]), dtype=bool)
    return RuleHits(crawler_ua=crawler[ua_codes], datacenter_ip=datacenter[ip_codes])


def rule_column_indices(features: Sequence[str] = FRAUD_FEATURES) -> tuple[int, ...]:
    """Positions of :data:`RULE_COLUMNS` in a feature list."""
    missing = [c for c in RULE_COLUMNS if c not in features]
    if missing:
        raise ValueError(f"fraud features lack the rule columns {missing}")
    return tuple(list(features).index(c) for c in RULE_COLUMNS)


def rules_from_matrix(x: np.ndarray, features: Sequence[str] = FRAUD_FEATURES) -> RuleHits:
    """The rules read from a fraud matrix (N, F), exactly as the ONNX graph reads them."""
    if x.ndim != 2 or x.shape[1] != len(features):
        raise ValueError(f"expected a (N, {len(features)}) fraud matrix, got {x.shape}")
    i_ua, i_dc = rule_column_indices(features)
    with np.errstate(invalid="ignore"):
        return RuleHits(crawler_ua=np.asarray(x[:, i_ua] > _HIT),
                        datacenter_ip=np.asarray(x[:, i_dc] > _HIT))


def combine(p_model: np.ndarray, rules: RuleHits | np.ndarray) -> np.ndarray:
    """P(invalid) of model and rules together: 1.0 where a rule fired, else the model's."""
    hit = rules.any if isinstance(rules, RuleHits) else np.asarray(rules, dtype=bool)
    p = np.asarray(p_model)
    if p.shape != hit.shape:
        raise ValueError(f"p_model has shape {p.shape} but the rules {hit.shape}")
    return np.where(hit, np.ones((), dtype=p.dtype), p)


def append_rules(model: onnx.ModelProto, *, model_output: str, output_name: str,
                 features: Sequence[str] = FRAUD_FEATURES) -> onnx.ModelProto:
    """Append :func:`combine` to a graph whose single output ``model_output`` is p_model (N,).

    The graph's first input is the fraud matrix; the rule columns are gathered from it,
    compared with 0.5 (NaN never fires), and ``output_name = Max(p_model, hit)`` becomes
    the only output. Returns a new, checked model; ``model`` is not changed.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if [o.name for o in graph.output] != [model_output]:
        raise ValueError(f"expected the single output {model_output!r}, got "
                         f"{[o.name for o in graph.output]}")
    x = graph.input[0].name
    i_ua, i_dc = rule_column_indices(features)
    graph.initializer.extend([
        helper.make_tensor("rule_col_ua", TensorProto.INT64, [], [i_ua]),
        helper.make_tensor("rule_col_dc", TensorProto.INT64, [], [i_dc]),
        helper.make_tensor("rule_hit_level", TensorProto.FLOAT, [], [_HIT]),
    ])
    graph.node.extend([
        helper.make_node("Gather", [x, "rule_col_ua"], ["rule_ua"], axis=1),     # (N,)
        helper.make_node("Gather", [x, "rule_col_dc"], ["rule_dc"], axis=1),     # (N,)
        helper.make_node("Greater", ["rule_ua", "rule_hit_level"], ["rule_ua_hit"]),
        helper.make_node("Greater", ["rule_dc", "rule_hit_level"], ["rule_dc_hit"]),
        helper.make_node("Or", ["rule_ua_hit", "rule_dc_hit"], ["rule_hit"]),
        helper.make_node("Cast", ["rule_hit"], ["rule_hit_f"], to=TensorProto.FLOAT),
        helper.make_node("Max", [model_output, "rule_hit_f"], [output_name]),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None]))
    onnx.checker.check_model(out)
    return out


__all__ = ["RULE_COLUMNS", "RULE_NAMES", "RuleHits", "append_rules", "combine",
           "rule_column_indices", "rules_for_requests", "rules_from_matrix"]
