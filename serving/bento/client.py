"""The BentoML model backend: one HTTP request per auction to ``bentoml serve``.

A pooled, keep-alive :class:`httpx.Client` posts the auction's tensors base64-encoded
(:mod:`serving.bento.codec`) to ``/score_auction`` (or ``/score_auctions``, the
adaptive-batching endpoint, with ``batched=True``). Failures map onto the serving
errors at once: a refused or dropped connection is :class:`BackendUnavailable`, a
phase (connect, write, read, waiting for a pooled connection) that takes longer than
``timeout_s`` is :class:`BackendTimeout`. Nothing retries: the decision engine owns the
auction's time budget and degrades to its fallback.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
import orjson

from serving.base import AuctionInputs, AuctionScores
from serving.bento.codec import decode_array, encode_array
from serving.errors import BackendTimeout, BackendUnavailable, ServingError

log = logging.getLogger(__name__)

_JSON = {"content-type": "application/json"}


class BentoBackend:
    """:class:`serving.base.ModelBackend` over HTTP to the Bento service at ``url``.

    ``timeout_s`` bounds each phase of a request (connect, send, receive, wait for a
    pooled connection); ``batched`` posts to the adaptive-batching endpoint instead;
    ``max_connections`` is the pool size (one per concurrent auction); ``transport``
    replaces the network (tests). Thread-safe: one instance serves all threads.
    """

    def __init__(self, url: str, timeout_s: float = 0.05, *, batched: bool = False,
                 max_connections: int = 64,
                 transport: httpx.BaseTransport | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self._timeout_s = timeout_s
        self._path = "/score_auctions" if batched else "/score_auction"
        self._batched = batched
        self._lock = threading.Lock()
        self._url = _base(url)
        self._closed = False
        # trust_env=False: a proxy from HTTP_PROXY must never sit between us and 127.0.0.1.
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            # Idle connections expire before uvicorn's 5 s keep-alive closes them, so a
            # request never races the server's close on a reused connection.
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections, keepalive_expiry=4.0),
            headers=_JSON, trust_env=False, transport=transport)

    @property
    def url(self) -> str:
        return self._url

    def set_url(self, url: str) -> None:
        """Send later requests to ``url`` (a replacement server); in-flight ones finish."""
        with self._lock:
            self._url = _base(url)

    def score(self, inputs: AuctionInputs) -> AuctionScores:
        auction = _encode(inputs)
        body = {"auctions": [auction]} if self._batched else {"auction": auction}
        data = self._post(self._path, orjson.dumps(body))
        result = data[0] if self._batched and isinstance(data, list) and len(data) == 1 else data
        return _decode(result, len(inputs.ctr))

    def versions(self) -> dict[str, str]:
        data = self._post("/versions", b"{}")
        if not isinstance(data, dict):
            raise ServingError(f"Bento /versions answered {data!r}")
        return {str(k): str(v) for k, v in data.items()}

    def close(self) -> None:
        self._closed = True
        self._client.close()

    def __enter__(self) -> BentoBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, body: bytes) -> Any:
        if self._closed:
            raise BackendUnavailable("the Bento backend is closed")
        base = self._url
        try:
            resp = self._client.post(base + path, content=body)
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"Bento at {base} gave no answer within "
                                 f"{self._timeout_s * 1000:.0f} ms ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"Bento at {base} is unreachable: "
                                     f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise _status_error(base, path, resp)
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise ServingError(f"Bento {path} answered a body that is not JSON: {exc}") from exc


def _base(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


def _encode(inputs: AuctionInputs) -> dict[str, Any]:
    if inputs.ctr.ndim != 2:
        raise ServingError(f"ctr must be a (K, F) matrix, got shape {list(inputs.ctr.shape)}")
    auction: dict[str, Any] = {"ctr": encode_array(inputs.ctr)}
    if inputs.fraud is not None:
        auction["fraud"] = encode_array(inputs.fraud)
    if inputs.shading is not None:
        auction["shading"] = encode_array(inputs.shading)
    return auction


def _decode(data: Any, k: int) -> AuctionScores:
    try:
        if data.get("error"):
            raise ServingError(f"Bento rejected the auction: {data['error']}")
        pctr = decode_array(**data["pctr"])
        landscape = data.get("landscape")
        shading = decode_array(**landscape) if landscape is not None else None
        fraud = data.get("p_fraud")
        versions = {str(n): str(v) for n, v in data["versions"].items()}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ServingError(f"Bento answered a malformed score: {exc!r}") from exc
    if pctr.shape != (k,):
        raise ServingError(f"Bento answered pctr of shape {list(pctr.shape)} for {k} candidates")
    return AuctionScores(pctr=pctr, fraud=None if fraud is None else float(fraud),
                         shading=shading, versions=versions)


def _status_error(url: str, path: str, resp: httpx.Response) -> ServingError:
    detail = resp.text[:500]
    if resp.status_code == 503:
        return BackendUnavailable(f"Bento at {url} is not ready or overloaded (503): {detail}")
    if resp.status_code in (408, 504):
        return BackendTimeout(f"Bento at {url} timed out ({resp.status_code}): {detail}")
    return ServingError(f"Bento {path} answered {resp.status_code}: {detail}")


__all__ = ["BentoBackend"]
