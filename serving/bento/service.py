"""The BentoML service: one HTTP round trip scores a whole auction.

Run it with ``bentoml serve serving.bento.service:AuctionService --port 3000`` (or
:func:`serving.bento.process.start_bento`). At start-up each worker resolves
``models:/ctr@<alias>`` and, where registered, ``fraud`` and ``shading`` in the MLflow
registry of ``ADPLATFORM_MLFLOW_TRACKING_URI`` / ``ADPLATFORM_HOME`` (aliases from
``ADPLATFORM_BENTO_ALIAS``, default ``champion``) and opens them with ONNX Runtime.

Endpoints (POST, JSON bodies in the format of :mod:`serving.bento.codec`):

- ``/score_auction``  ``{"auction": WireAuction}`` -> ``WireScores``. The default path.
- ``/score_auctions`` ``{"auctions": [WireAuction, ...]}`` -> ``[WireScores, ...]``,
  adaptive batching: BentoML's dispatcher joins the lists of concurrent requests along
  axis 0 (whole auctions, never split), and each model runs once on the stacked rows
  of the batch. An invalid auction gets ``error`` set in its own result instead of
  failing the others batched with it.
- ``/versions`` ``{}`` -> ``{"ctr": "3", ...}``.
- ``/readyz`` (BentoML): answers 200 only once the models are loaded. Models load in
  the worker's ``__init__``, before the worker serves any request, and
  ``__is_ready__`` reports them; a worker whose models fail to load exits with the
  reason in the log (:mod:`serving.bento.process` watches for it).

A new alias target is picked up by a restart: see :meth:`BentoProcess.restart`.
Runtime settings (workers, traffic) can be overridden with BentoML's own
``BENTOML_CONFIG_OPTIONS``, e.g. ``services.adplatform_auction.workers=2``.
"""

from __future__ import annotations

import logging
import os

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument, ServiceUnavailable

from adplatform.config import Settings
from serving.base import AuctionInputs, AuctionScores
from serving.bento.codec import WireAuction, WireScores, WireTensor
from serving.bento.models import ALIAS_ENV, AuctionModels, InvalidAuction, parse_aliases

log = logging.getLogger(__name__)

SERVICE_NAME = "adplatform_auction"
MAX_BATCH_AUCTIONS = 64       # auctions per adaptive batch (about 1,300 CTR rows at K=20)
MAX_BATCH_LATENCY_MS = 20     # the dispatcher sheds (503) what would wait longer: an
                              # auction has ~90 ms in all (tmax 100 ms - margin)


def _inputs(auction: WireAuction) -> AuctionInputs:
    return AuctionInputs(
        ctr=auction.ctr.array,
        fraud=auction.fraud.array if auction.fraud is not None else None,
        shading=auction.shading.array if auction.shading is not None else None)


def _wire(scores: AuctionScores) -> WireScores:
    return WireScores(
        pctr=WireTensor.of(scores.pctr), p_fraud=scores.fraud,
        landscape=WireTensor.of(scores.shading) if scores.shading is not None else None,
        versions=scores.versions)


@bentoml.service(
    name=SERVICE_NAME,
    workers=1,
    # Threads for the sync (batched) endpoint: ONNX Runtime releases the GIL, so a
    # batch scores while the event loop parses the next bodies.
    threads=2,
    traffic={"timeout": 10},
    # One access-log line per auction costs more than the scoring; metrics stay on.
    logging={"access": {"enabled": False}},
)
class AuctionService:
    """Scores auctions with the ONNX models the registry aliases point at."""

    def __init__(self) -> None:
        aliases = parse_aliases(os.environ.get(ALIAS_ENV))
        self._models: AuctionModels | None = AuctionModels.from_registry(Settings(), aliases)
        log.info("serving %s", self._models.versions())

    def __is_ready__(self) -> bool:
        return self._models is not None

    def _loaded(self) -> AuctionModels:
        if self._models is None:
            raise ServiceUnavailable("the models are not loaded")
        return self._models

    # async: scoring one auction takes ~50 us of ONNX Runtime, less than handing it to
    # a worker thread costs (measured: p50 0.15 ms lower, 20% more auctions/s).
    @bentoml.api(route="/score_auction")
    async def score_auction(self, auction: WireAuction) -> WireScores:
        """Score one auction: pctr for its K rows, p_fraud, the shading landscape."""
        try:
            return _wire(self._loaded().score(_inputs(auction)))
        except InvalidAuction as exc:
            raise InvalidArgument(str(exc)) from exc

    @bentoml.api(route="/score_auctions", batchable=True, max_batch_size=MAX_BATCH_AUCTIONS,
                 max_latency_ms=MAX_BATCH_LATENCY_MS)
    def score_auctions(self, auctions: list[WireAuction]) -> list[WireScores]:
        """Score a batch of auctions (adaptive batching joins concurrent requests)."""
        models = self._loaded()
        inputs = [_inputs(a) for a in auctions]
        errors: dict[int, str] = {}
        for i, one in enumerate(inputs):
            try:
                models.check(one)
            except InvalidAuction as exc:
                errors[i] = str(exc)
        valid = [i for i in range(len(inputs)) if i not in errors]
        scored = dict(zip(valid, models.score_many([inputs[i] for i in valid]), strict=True))
        empty = WireTensor.of(np.zeros(0, dtype=np.float32))
        return [_wire(scored[i]) if i in scored else WireScores(pctr=empty, error=errors[i])
                for i in range(len(inputs))]

    @bentoml.api(route="/versions")
    def versions(self) -> dict[str, str]:
        """The registry version of every model served (model name -> version)."""
        return self._loaded().versions()

    @bentoml.on_shutdown
    def close(self) -> None:
        if self._models is not None:
            self._models.close()
        self._models = None
