"""The models a Bento process serves: resolved by alias, run with ONNX Runtime.

At start-up the service resolves ``models:/ctr@<alias>`` (required) and
``models:/fraud@<alias>``, ``models:/shading@<alias>`` (each optional) in the MLflow
registry and opens one ONNX Runtime session per model with the in-process backend's
session settings (:mod:`serving.onnx_backend`). Scoring follows
:meth:`serving.onnx_backend.OnnxBackend.score` exactly; :meth:`AuctionModels.score_many`
stacks the rows of several auctions so that each model runs once per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adplatform.config import Settings
from adplatform.errors import ConfigError
from serving.base import AuctionInputs, AuctionScores
from serving.errors import BackendUnavailable, ServingError
from serving.onnx_backend import _Session

log = logging.getLogger(__name__)

ALIAS_ENV = "ADPLATFORM_BENTO_ALIAS"
DEFAULT_ALIAS = "champion"
REQUIRED = "ctr"
# name -> (input tensor, output tensor): the serving contract of every registered model.
CONTRACT: dict[str, tuple[str, str]] = {
    "ctr": ("ctr_features", "pctr"),
    "fraud": ("fraud_features", "p_fraud"),
    "shading": ("shading_features", "landscape"),
}


class InvalidAuction(ServingError):
    """An auction's tensors do not fit the models (shape, feature count)."""


def parse_aliases(spec: str | None) -> dict[str, str]:
    """The alias per model from ``ADPLATFORM_BENTO_ALIAS``.

    ``"challenger"`` applies to every model; ``"ctr=challenger,fraud=champion"`` sets
    single models; ``"challenger,fraud=champion"`` mixes both. Unset means champion.
    """
    default = DEFAULT_ALIAS
    per_model: dict[str, str] = {}
    for raw in (spec or "").split(","):
        item = raw.strip()
        if not item:
            continue
        if "=" in item:
            name, _, alias = (s.strip() for s in item.partition("="))
            if name not in CONTRACT:
                raise ConfigError(f"{ALIAS_ENV}: unknown model {name!r} in {spec!r}; "
                                  f"models are {sorted(CONTRACT)}")
            if not alias:
                raise ConfigError(f"{ALIAS_ENV}: empty alias for {name!r} in {spec!r}")
            per_model[name] = alias
        else:
            default = item
    return {name: per_model.get(name, default) for name in CONTRACT}


@dataclass(frozen=True)
class LoadedModel:
    name: str
    alias: str
    version: str
    session: _Session
    n_features: int | None      # the model's static feature count, None when dynamic


def open_model(name: str, alias: str, version: str, path: Path) -> LoadedModel:
    """Open one ONNX file and check it against the tensor-name contract."""
    session = _Session(path)
    want_in, want_out = CONTRACT[name]
    if (session.input, session.output) != (want_in, want_out):
        raise ServingError(f"models:/{name}@{alias} (version {version}) has tensors "
                           f"{session.input!r} -> {session.output!r}; the contract is "
                           f"{want_in!r} -> {want_out!r}")
    shape = session.sess.get_inputs()[0].shape
    n_features = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
    return LoadedModel(name=name, alias=alias, version=version, session=session,
                       n_features=n_features)


class AuctionModels:
    """The ctr model and, where registered, the fraud and shading models."""

    def __init__(self, models: Mapping[str, LoadedModel]) -> None:
        if REQUIRED not in models:
            raise BackendUnavailable("the Bento service needs a ctr model")
        self._models = dict(models)
        self._versions = {name: m.version for name, m in self._models.items()}

    @classmethod
    def from_registry(cls, settings: Settings, aliases: Mapping[str, str]) -> AuctionModels:
        """Resolve every alias; a missing ctr fails, a missing fraud/shading is skipped."""
        from mlops.errors import ModelNotFound
        from mlops.registry import resolve

        models: dict[str, LoadedModel] = {}
        for name in CONTRACT:
            alias = aliases.get(name, DEFAULT_ALIAS)
            try:
                resolved = resolve(settings, name, alias)
            except ModelNotFound:
                if name == REQUIRED:
                    raise
                log.info("models:/%s@%s is not registered; serving without it", name, alias)
                continue
            models[name] = open_model(name, alias, resolved.version, resolved.onnx_path)
            log.info("loaded models:/%s@%s = version %s from %s", name, alias,
                     resolved.version, resolved.onnx_path)
        return cls(models)

    def versions(self) -> dict[str, str]:
        return dict(self._versions)

    def check(self, inputs: AuctionInputs) -> None:
        """Raise :class:`InvalidAuction` naming the first tensor that does not fit."""
        if REQUIRED not in self._models:
            raise BackendUnavailable("the Bento models are closed")
        k = _rows(inputs.ctr, "ctr")
        self._check_features(inputs.ctr, "ctr")
        if inputs.fraud is not None:
            if _rows(inputs.fraud, "fraud") != 1:
                raise InvalidAuction(f"fraud must be one row, got shape {list(inputs.fraud.shape)}")
            self._check_features(inputs.fraud, "fraud")
        if inputs.shading is not None:
            if _rows(inputs.shading, "shading") not in (1, k):
                raise InvalidAuction(f"shading has {inputs.shading.shape[0]} rows; "
                                     f"expected 1 (per auction) or {k} (per candidate)")
            self._check_features(inputs.shading, "shading")

    def _check_features(self, x: np.ndarray, name: str) -> None:
        model = self._models.get(name)
        if model is not None and model.n_features is not None and x.shape[1] != model.n_features:
            raise InvalidAuction(f"{name} has {x.shape[1]} features, models:/{name}@"
                                 f"{model.alias} (version {model.version}) reads {model.n_features}")

    def score(self, inputs: AuctionInputs) -> AuctionScores:
        """One auction, as :meth:`OnnxBackend.score` scores it."""
        self.check(inputs)
        pctr = self._run("ctr", inputs.ctr)
        fraud = None
        if inputs.fraud is not None and "fraud" in self._models:
            fraud = float(self._run("fraud", inputs.fraud)[0])
        shading = None
        if inputs.shading is not None and "shading" in self._models:
            shading = self._run("shading", inputs.shading)
        return AuctionScores(pctr=pctr, fraud=fraud, shading=shading, versions=self._versions)

    def score_many(self, auctions: Sequence[AuctionInputs]) -> list[AuctionScores]:
        """Several auctions, each model run once on the stacked rows of all of them."""
        for inputs in auctions:
            self.check(inputs)
        if not auctions:
            return []
        pctr = _split(self._run("ctr", np.concatenate([a.ctr for a in auctions])),
                      [len(a.ctr) for a in auctions])
        fraud: list[float | None] = [None] * len(auctions)
        with_fraud = [i for i, a in enumerate(auctions) if a.fraud is not None]
        if with_fraud and "fraud" in self._models:
            rows = np.concatenate([_given(auctions[i].fraud) for i in with_fraud])
            for i, p in zip(with_fraud, self._run("fraud", rows), strict=True):
                fraud[i] = float(p)
        shading: list[np.ndarray | None] = [None] * len(auctions)
        with_shading = [i for i, a in enumerate(auctions) if a.shading is not None]
        if with_shading and "shading" in self._models:
            stacked = [_given(auctions[i].shading) for i in with_shading]
            parts = _split(self._run("shading", np.concatenate(stacked)), [len(s) for s in stacked])
            for i, part in zip(with_shading, parts, strict=True):
                shading[i] = part
        return [AuctionScores(pctr=p, fraud=f, shading=s, versions=self._versions)
                for p, f, s in zip(pctr, fraud, shading, strict=True)]

    def _run(self, name: str, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._models[name].session.run(x))

    def close(self) -> None:
        self._models = {}


def _rows(x: np.ndarray, name: str) -> int:
    if x.ndim != 2:
        raise InvalidAuction(f"{name} must be a (rows, features) matrix, got shape {list(x.shape)}")
    return int(x.shape[0])


def _given(x: np.ndarray | None) -> np.ndarray:
    if x is None:       # callers filter on presence first; this keeps the types honest
        raise InvalidAuction("missing tensor")
    return x


def _split(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(x, np.cumsum(sizes)[:-1])


__all__ = ["ALIAS_ENV", "CONTRACT", "DEFAULT_ALIAS", "AuctionModels", "InvalidAuction",
           "LoadedModel", "open_model", "parse_aliases"]
