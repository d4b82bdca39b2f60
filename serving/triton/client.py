"""Triton model backend: one request to the ``auction`` model per scored auction.

:class:`TritonBackend` implements :class:`serving.base.ModelBackend` over gRPC (default)
or HTTP with tritonclient. It keeps one client (gRPC: one channel, thread-safe; HTTP:
one keep-alive connection per calling thread), never waits past ``timeout_s``, and maps
failures onto the serving errors: server down or model not loaded ->
:class:`BackendUnavailable` (at once), deadline passed -> :class:`BackendTimeout`.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from serving.base import AuctionInputs, AuctionScores
from serving.errors import BackendTimeout, BackendUnavailable, ServingError

if TYPE_CHECKING:
    from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)

Protocol = Literal["grpc", "http"]
MODEL_NAMES = ("ctr", "fraud", "shading")
OUTPUTS = ("pctr", "p_fraud", "landscape", "versions")
_UNAVAILABLE = ("UNAVAILABLE", "NOT_FOUND", "404", "503", "unknown model", "not ready",
                "failed to connect", "connection refused", "socket closed")
_TIMEOUT = ("DEADLINE_EXCEEDED", "504", "timed out", "timeout")
# Reconnect quickly after a restart (gRPC's default backoff grows to two minutes).
_GRPC_CHANNEL_ARGS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


def _matrix(name: str, x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a (rows, features) matrix, got shape {x.shape}")
    return x


def _classify(exc: InferenceServerException, what: str) -> ServingError:
    """A tritonclient error as the serving error the engine understands."""
    text = f"{exc.status() or ''} {exc.message() or ''}"
    lowered = text.lower()
    if any(t.lower() in lowered for t in _TIMEOUT):
        return BackendTimeout(f"{what}: {text.strip()}")
    if any(t.lower() in lowered for t in _UNAVAILABLE):
        return BackendUnavailable(f"{what}: {text.strip()}")
    return ServingError(f"{what}: {text.strip()}")


class TritonBackend:
    """Scores auctions on a Triton server (``model``: the repository's ``auction``)."""

    def __init__(self, url: str, protocol: Protocol = "grpc", timeout_s: float = 0.25,
                 model: str = "auction") -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url = url.removeprefix("http://").removeprefix("grpc://")
        self.protocol: Protocol = protocol
        self.timeout_s = float(timeout_s)
        self.model = model
        self._lock = threading.Lock()
        self._grpc: Any = None
        self._local = threading.local()              # HTTP: one client per thread
        self._http_clients: list[Any] = []
        self._closed = False
        self._versions_blob: bytes = b""
        self._versions: dict[str, str] = {}

    # -- clients ------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._closed:
            raise BackendUnavailable("the Triton backend is closed")
        if self.protocol == "grpc":
            if self._grpc is None:
                import tritonclient.grpc as grpcclient

                with self._lock:
                    if self._grpc is None:
                        self._grpc = grpcclient.InferenceServerClient(
                            self.url, channel_args=_GRPC_CHANNEL_ARGS)
            return self._grpc
        client = getattr(self._local, "client", None)
        if client is None or client[1] != self.timeout_s:
            import tritonclient.http as httpclient

            # geventhttpclient is not shareable across threads; its pool keeps the
            # connection alive between calls and drops one that failed or timed out.
            http = httpclient.InferenceServerClient(
                self.url, concurrency=1, connection_timeout=self.timeout_s,
                network_timeout=self.timeout_s)
            with self._lock:
                self._http_clients.append(http)
            client = (http, self.timeout_s)
            self._local.client = client
        return client[0]

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise _classify(exc, what) from exc
        except TimeoutError as exc:                   # HTTP socket timeout
            self._drop_http_client()
            raise BackendTimeout(f"{what}: no answer within {self.timeout_s} s") from exc
        except OSError as exc:                        # HTTP: refused, reset, unreachable
            self._drop_http_client()
            raise BackendUnavailable(f"{what}: {self.url}: {exc}") from exc

    def _drop_http_client(self) -> None:
        """Forget this thread's HTTP client so a late answer never reaches the next call."""
        client = getattr(self._local, "client", None)
        if client is not None:
            self._local.client = None
            with self._lock:
                self._http_clients = [c for c in self._http_clients if c is not client[0]]
            client[0].close()

    # -- ModelBackend --------------------------------------------------------------------

    def _build_request(self, inputs: AuctionInputs) -> tuple[list[Any], list[Any] | None]:
        tensors = {"ctr_features": _matrix("ctr", inputs.ctr)}
        if inputs.fraud is not None:
            tensors["fraud_features"] = _matrix("fraud", inputs.fraud)
        if inputs.shading is not None:
            tensors["shading_features"] = _matrix("shading", inputs.shading)
        if self.protocol == "grpc":
            import tritonclient.grpc as grpcclient

            grpc_inputs = []
            for name, x in tensors.items():
                t = grpcclient.InferInput(name, list(x.shape), "FP32")
                t.set_data_from_numpy(x)
                grpc_inputs.append(t)
            return grpc_inputs, None                  # gRPC answers every output in binary
        import tritonclient.http as httpclient

        http_inputs = []
        for name, x in tensors.items():
            t = httpclient.InferInput(name, list(x.shape), "FP32")
            t.set_data_from_numpy(x, binary_data=True)
            http_inputs.append(t)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
        return http_inputs, outputs

    def _parse_versions(self, blob: Any) -> dict[str, str]:
        raw = bytes(blob) if not isinstance(blob, bytes) else blob
        if raw != self._versions_blob:
            self._versions = {str(k): str(v) for k, v in json.loads(raw).items()}
            self._versions_blob = raw
        return self._versions

    def score(self, inputs: AuctionInputs) -> AuctionScores:
        """One request to the auction model; raises BackendUnavailable / BackendTimeout."""
        client = self._client()
        request_inputs, outputs = self._build_request(inputs)
        if len(inputs.ctr) == 0:                      # no candidate: nothing to ask
            return AuctionScores(pctr=np.zeros((0,), dtype=np.float32),
                                 versions=self._versions)
        what = f"triton {self.protocol}://{self.url}/{self.model}"
        if self.protocol == "grpc":
            result = self._call(what, client.infer, self.model, request_inputs,
                                client_timeout=self.timeout_s)
        else:
            result = self._call(what, client.infer, self.model, request_inputs,
                                outputs=outputs)
        blob = result.as_numpy("versions")
        pctr = result.as_numpy("pctr")
        if blob is None or pctr is None:
            raise ServingError(f"{what}: the answer lacks pctr or versions")
        versions = self._parse_versions(blob.reshape(-1)[0])
        fraud = None
        if inputs.fraud is not None and "fraud" in versions:
            fraud = float(result.as_numpy("p_fraud").reshape(-1)[0])
        shading = None
        if inputs.shading is not None and "shading" in versions:
            shading = result.as_numpy("landscape")
        return AuctionScores(pctr=pctr, fraud=fraud, shading=shading, versions=versions)

    def versions(self) -> dict[str, str]:
        """Loaded version of each model, from the server's model metadata."""
        client = self._client()
        what = f"triton {self.protocol}://{self.url} metadata"
        grpc = self.protocol == "grpc"
        extra = {"client_timeout": self.timeout_s} if grpc else {}
        found: dict[str, str] = {}
        for name in MODEL_NAMES:
            if not self._call(what, client.is_model_ready, name, **extra):
                continue
            meta = self._call(what, client.get_model_metadata, name, **extra)
            listed = list(meta.versions) if grpc else list(meta.get("versions", []))
            if listed:
                found[name] = max(listed, key=lambda v: int(v) if str(v).isdigit() else -1)
        return found

    def close(self) -> None:
        with self._lock:
            self._closed = True
            grpc, self._grpc = self._grpc, None
            http, self._http_clients = self._http_clients, []
        if grpc is not None:
            grpc.close()
        for client in http:
            client.close()


__all__ = ["TritonBackend"]
