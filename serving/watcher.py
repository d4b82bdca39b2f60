"""Hot reload: follow ``models:/NAME@ALIAS`` in the MLflow registry and swap what is served.

:class:`AliasWatcher` polls the version behind each watched alias every ``interval_s``
seconds (default 5) in a daemon thread and calls its subscribers with
``(name, old_version, new_version)`` when an alias moves. It never raises into the
caller: a registry error is logged and the poll retried with exponential backoff (up to
``max_backoff_s``); a subscriber that fails is logged and retried with backoff too, and
keeps its old version meanwhile. An alias that disappears is logged; subscribers keep
serving what they have.

Subscribers ("followers") that apply a move to a backend:

- :class:`OnnxFollower`: in-process :class:`~serving.onnx_backend.OnnxBackend`. It
  downloads the new version's files first, opens and probes the model (tensor names,
  feature count, finite output), then :meth:`OnnxBackend.swap` replaces the session in
  one assignment: requests in flight finish on the old session, none fails.
- :class:`TritonFollower`: writes a fresh Triton repository from the registry and
  :meth:`TritonProcess.reload` serves it. PyTriton cannot load a model in place, so the
  reload is a restart on the same ports: clients get ``BackendUnavailable`` for the
  restart and the engine answers no-bid (HTTP 204, never a 5xx) meanwhile.
- :class:`BentoFollower`: :meth:`BentoProcess.restart` blue/green: the replacement
  starts on another port, clients in this process are repointed only once its
  ``/readyz`` is 200, and the old server drains.

mlflow is never imported by importing this module. With the default source the
watcher thread imports it on its first poll (``import mlflow``: 4.4 s and 170 MiB
peak RSS on the 2-core dev machine); the decision service instead passes its
:class:`~mlops.registry_sidecar.RegistrySidecar` as ``source`` and ``fetch``, so mlflow
runs in a child process and never in the one that answers auctions. Polling is one
registry read per watched model per interval, off the request path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adplatform.config import Settings
from serving.errors import ServingError

if TYPE_CHECKING:
    from serving.base import ModelBackend
    from serving.bento.client import BentoBackend
    from serving.bento.process import BentoProcess
    from serving.onnx_backend import OnnxBackend
    from serving.triton.server import TritonProcess

log = logging.getLogger(__name__)

MODEL_NAMES = ("ctr", "fraud", "shading")
DEFAULT_ALIAS = "champion"
DEFAULT_INTERVAL_S = 5.0
MAX_BACKOFF_S = 60.0

# (name, old version or None when the model was not served, new version)
Subscriber = Callable[[str, str | None, str], None]
# (name, alias) -> version, or None when the alias is unset; raises on registry errors
VersionSource = Callable[[str, str], str | None]


class MlflowVersionSource:
    """Alias targets read with an ``MlflowClient`` created on first use.

    The first call imports mlflow, in whichever thread makes it: the watcher's.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None

    def __call__(self, name: str, alias: str) -> str | None:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri,
                                        registry_uri=self.tracking_uri)
        from mlops.promotion_registry import alias_version

        return alias_version(self._client, name, alias)

    def reset(self) -> None:
        """Drop the client (after an error the next poll connects afresh)."""
        self._client = None


def backoff_s(failures: int, interval_s: float, cap_s: float) -> float:
    """Delay before the next try after ``failures`` consecutive failures."""
    return float(min(interval_s * 2.0 ** max(failures, 0), cap_s))


@dataclass
class _Subscription:
    fn: Subscriber
    served: dict[str, str | None]          # absent name: adopt the first version seen
    retry: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)


class AliasWatcher:
    """Polls the registry for the versions behind aliases; tells subscribers of moves.

    ``models`` is a list of model names (all watched at ``alias``) or a mapping
    name -> alias. Give ``settings`` (its tracking URI is read) or a ``source``.
    """

    def __init__(self, models: Sequence[str] | Mapping[str, str], *,
                 settings: Settings | None = None, source: VersionSource | None = None,
                 alias: str = DEFAULT_ALIAS, interval_s: float = DEFAULT_INTERVAL_S,
                 max_backoff_s: float = MAX_BACKOFF_S, thread_name: str = "alias-watcher"
                 ) -> None:
        if interval_s <= 0 or max_backoff_s < interval_s:
            raise ValueError(f"need 0 < interval_s ({interval_s}) <= max_backoff_s "
                             f"({max_backoff_s})")
        if source is None:
            if settings is None:
                raise ValueError("AliasWatcher needs settings or a version source")
            source = MlflowVersionSource(settings.tracking_uri)
        self.aliases = dict(models) if isinstance(models, Mapping) else \
            {name: alias for name in models}
        if not self.aliases:
            raise ValueError("AliasWatcher needs at least one model to watch")
        self.interval_s = float(interval_s)
        self.max_backoff_s = float(max_backoff_s)
        self._source = source
        self._subs: list[_Subscription] = []
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_name = thread_name
        self._seen: dict[str, str | None] = {}
        self._busy = threading.Event()     # set while a subscriber applies a move
        self.polls = 0
        self.errors = 0                    # failed registry polls
        self.moves = 0                     # moves applied by subscribers

    # ------------------------------------------------------------------ control

    def subscribe(self, fn: Subscriber, serving: Mapping[str, str | None] | None = None) -> None:
        """Call ``fn(name, old, new)`` on every move.

        ``serving``: what ``fn``'s backend serves now (None: not served; a model that is
        registered later is then added). A name left out adopts the first version seen
        without a call.
        """
        with self._lock:
            self._subs.append(_Subscription(fn=fn, served=dict(serving or {})))

    def start(self) -> AliasWatcher:
        """Start polling in a daemon thread (the first poll runs at once)."""
        if self._thread is not None:
            raise RuntimeError("the alias watcher is already started")
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop polling; waits up to ``timeout_s`` for a move in progress to finish."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("alias watcher still busy after %.0fs; it stops after the "
                            "current move", timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        """Whether a subscriber is applying a move now (e.g. a server restarting)."""
        return self._busy.is_set()

    def versions(self) -> dict[str, str | None]:
        """The versions behind the aliases at the last poll (None: alias unset)."""
        with self._lock:
            return dict(self._seen)

    def __enter__(self) -> AliasWatcher:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ polling

    def poll_once(self) -> dict[str, str | None]:
        """Read every alias once and notify subscribers, in the calling thread.

        Registry errors propagate (the thread retries them); subscriber errors are
        logged and retried on a later poll.
        """
        with self._poll_lock:
            seen = {name: self._source(name, alias) for name, alias in self.aliases.items()}
            with self._lock:
                before, self._seen = self._seen, dict(seen)
                subs = list(self._subs)
                self.polls += 1
            for name, version in seen.items():
                if version is None and before.get(name) is not None:
                    log.warning("models:/%s@%s is gone (was version %s); serving what is "
                                "loaded", name, self.aliases[name], before[name])
            for sub in subs:
                for name, version in seen.items():
                    if version is not None:
                        self._deliver(sub, name, version)
            return seen

    def _deliver(self, sub: _Subscription, name: str, version: str) -> None:
        if name not in sub.served:
            sub.served[name] = version
            return
        old = sub.served[name]
        if old == version:
            return
        key = (name, version)
        next_at, failures = sub.retry.get(key, (0.0, 0))
        now = time.monotonic()
        if now < next_at:
            return
        alias = self.aliases[name]
        self._busy.set()
        try:
            sub.fn(name, old, version)
        except Exception:  # noqa: BLE001 - a failed swap is logged, retried, never raised
            failures += 1
            delay = backoff_s(failures, self.interval_s, self.max_backoff_s)
            sub.retry[key] = (time.monotonic() + delay, failures)
            log.exception("models:/%s@%s moved %s -> %s, but %s failed to follow "
                          "(attempt %d; retry in %.0fs); still serving %s", name, alias, old,
                          version, _name(sub.fn), failures, delay, old)
            return
        finally:
            self._busy.clear()
        sub.served[name] = version
        sub.retry.pop(key, None)
        with self._lock:
            self.moves += 1
        log.info("models:/%s@%s moved %s -> %s: %s follows", name, alias, old, version,
                 _name(sub.fn))

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - registry errors: logged, backoff, retry
                failures += 1
                with self._lock:
                    self.errors += 1
                delay = backoff_s(failures, self.interval_s, self.max_backoff_s)
                log.warning("registry poll failed (%d in a row): %s: %s; retrying in %.1fs",
                            failures, type(exc).__name__, exc, delay,
                            exc_info=failures == 1)
                reset = getattr(self._source, "reset", None)
                if callable(reset):
                    reset()
            else:
                failures = 0
                delay = self.interval_s
            self._stop.wait(delay)


def _name(fn: object) -> str:
    return str(getattr(fn, "__name__", type(fn).__name__))


# ---------------------------------------------------------------------- followers

def _fetch_onnx(settings: Settings) -> Callable[[str, str], Path]:
    def fetch(name: str, version: str) -> Path:
        from mlops.promotion_registry import fetch_version

        return fetch_version(settings, name, version).onnx_path
    return fetch


def probe_model(name: str, path: Path, n_features: int | None = None) -> int:
    """Open ``path`` and check it against the serving contract of ``name``.

    Checks the tensor names, the feature count (``n_features`` when given) and that two
    rows of zeros give two finite outputs. Returns the model's feature count; raises
    :class:`ServingError` naming the problem.
    """
    import onnxruntime as ort

    from serving.triton.repository import CONTRACT

    if name not in CONTRACT:
        raise ServingError(f"unknown model {name!r}; expected one of {sorted(CONTRACT)}")
    want_in, want_out = CONTRACT[name]
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several types; all mean "unusable"
        raise ServingError(f"{name}: {path} does not load in ONNX Runtime: {exc}") from exc
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if [i.name for i in inputs] != [want_in] or outputs[0].name != want_out:
        raise ServingError(f"{name}: {path} maps {[i.name for i in inputs]} -> "
                           f"{[o.name for o in outputs]}; the contract is {want_in!r} -> "
                           f"{want_out!r}")
    shape = inputs[0].shape
    width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else n_features
    if width is None:
        raise ServingError(f"{name}: {path} has input shape {shape} and no known width")
    if n_features is not None and width != n_features:
        raise ServingError(f"{name}: {path} reads {width} features; the served model reads "
                           f"{n_features}")
    out = np.asarray(sess.run([want_out], {want_in: np.zeros((2, width), np.float32)})[0])
    if out.ndim < 1 or out.shape[0] != 2 or not np.all(np.isfinite(out)):
        raise ServingError(f"{name}: {path} answered {out.shape} {out.ravel()[:4]} for two "
                           f"rows (need 2 finite rows)")
    return int(width)


class OnnxFollower:
    """Applies a move to an in-process :class:`OnnxBackend`: fetch, probe, then swap."""

    def __init__(self, settings: Settings, backend: OnnxBackend, *,
                 fetch: Callable[[str, str], Path] | None = None) -> None:
        self.backend = backend
        self._fetch = fetch or _fetch_onnx(settings)
        self._widths: dict[str, int] = {}

    def __call__(self, name: str, old: str | None, new: str) -> None:
        from serving.onnx_backend import ModelFile

        if self.backend.versions().get(name) == new:
            return
        if name not in self._widths and old is not None:
            self._widths[name] = probe_model(name, self._fetch(name, old))
        path = self._fetch(name, new)                          # files first ...
        self._widths[name] = probe_model(name, path, self._widths.get(name))
        self.backend.swap(ModelFile(name=name, version=new, path=path))  # ... then swap
        log.info("in-process %s: version %s -> %s", name, old, new)


def _repo_versions(repo: Path) -> dict[str, str]:
    import json

    from serving.triton.repository import MARKER

    try:
        doc = json.loads((Path(repo) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in doc.items()}


class TritonFollower:
    """Writes a fresh repository from the registry and reloads the Triton server on it.

    Each reload gets a new folder under ``repo_root`` (the running server keeps reading
    the old one until it stops); the folder served before is removed afterwards.
    """

    def __init__(self, settings: Settings, process: TritonProcess, repo_root: Path, *,
                 alias: str = DEFAULT_ALIAS, reload_timeout_s: float = 180.0,
                 **repo_options: Any) -> None:
        self.settings = settings
        self.process = process
        self.repo_root = Path(repo_root)
        self.alias = alias
        self.reload_timeout_s = reload_timeout_s
        self.repo_options = repo_options

    def __call__(self, name: str, old: str | None, new: str) -> None:
        import shutil

        from serving.triton.repository import repository_from_registry

        if _repo_versions(self.process.repo).get(name) == new:
            return
        self.repo_root.mkdir(parents=True, exist_ok=True)
        target = self.repo_root / f"repo-{time.strftime('%Y%m%d-%H%M%S')}-{name}-{new}"
        repository_from_registry(self.settings, target, self.alias, **self.repo_options)
        written = _repo_versions(target)
        if written.get(name) != new:
            log.info("models:/%s@%s moved on to %s meanwhile; serving that", name, self.alias,
                     written.get(name))
        before = Path(self.process.repo)
        self.process.reload(target, self.reload_timeout_s)
        log.info("Triton reloaded on %s (%s)", target, written)
        if before != target and before.parent.resolve() == self.repo_root.resolve():
            shutil.rmtree(before, ignore_errors=True)


class BentoFollower:
    """Restarts ``bentoml serve`` blue/green; repoints ``clients`` once the new one is ready.

    ``same_port=True`` restarts on the current port (for clients in other processes that
    know only that URL): no overlap, so they see ``BackendUnavailable`` for the start-up.
    """

    def __init__(self, process: BentoProcess, clients: Sequence[BentoBackend] = (), *,
                 same_port: bool = False, drain_s: float = 1.0,
                 probe_timeout_s: float = 5.0) -> None:
        self.process = process
        self.clients = list(clients)
        self.same_port = same_port
        self.drain_s = drain_s
        self.probe_timeout_s = probe_timeout_s

    def served_versions(self, url: str) -> dict[str, str]:
        """The versions the Bento server at ``url`` serves."""
        from serving.bento.client import BentoBackend

        with BentoBackend(url, timeout_s=self.probe_timeout_s) as client:
            return client.versions()

    def __call__(self, name: str, old: str | None, new: str) -> None:
        if self.process.is_running() and self.served_versions(self.process.url).get(name) == new:
            return

        def on_ready(url: str) -> None:
            got = self.served_versions(url)
            if got.get(name) != new:
                log.info("bento on %s serves %s (alias moved on from %s)", url, got, new)
            for client in self.clients:
                client.set_url(url)

        url = self.process.restart(port=self.process.port if self.same_port else None,
                                   on_ready=on_ready, drain_s=self.drain_s)
        log.info("bento restarted on %s for %s %s -> %s", url, name, old, new)


# ---------------------------------------------------------------------- wiring

def watch_backend(settings: Settings, backend: ModelBackend, *, alias: str = DEFAULT_ALIAS,
                  interval_s: float = DEFAULT_INTERVAL_S, source: VersionSource | None = None,
                  fetch: Callable[[str, str], Path] | None = None) -> AliasWatcher | None:
    """Start following ``alias`` for the decision service's backend.

    In-process ONNX: returns a started watcher with an :class:`OnnxFollower`. A remote
    backend (Triton, BentoML) is followed by the process that runs the model server
    (:func:`watch_triton`, :func:`watch_bento`); this returns None for it. ``source`` and
    ``fetch`` read the registry (default: mlflow in this process); the decision service
    gives its :class:`~mlops.registry_sidecar.RegistrySidecar`, so it never imports mlflow.
    """
    from serving.onnx_backend import OnnxBackend

    if not isinstance(backend, OnnxBackend):
        log.info("%s: the model server follows the registry, not the decision service",
                 type(backend).__name__)
        return None
    served = backend.versions()
    watcher = AliasWatcher(MODEL_NAMES, settings=settings, source=source, alias=alias,
                           interval_s=interval_s)
    watcher.subscribe(OnnxFollower(settings, backend, fetch=fetch),
                      {n: served.get(n) for n in MODEL_NAMES})
    return watcher.start()


def watch_triton(settings: Settings, process: TritonProcess, repo_root: Path, *,
                 alias: str = DEFAULT_ALIAS, interval_s: float = DEFAULT_INTERVAL_S,
                 **repo_options: Any) -> AliasWatcher:
    """Start following ``alias`` for a Triton server started from a generated repository."""
    served = _repo_versions(process.repo)
    watcher = AliasWatcher(MODEL_NAMES, settings=settings, alias=alias, interval_s=interval_s)
    watcher.subscribe(TritonFollower(settings, process, repo_root, alias=alias, **repo_options),
                      {n: served.get(n) for n in MODEL_NAMES})
    return watcher.start()


def watch_bento(settings: Settings, process: BentoProcess,
                clients: Sequence[BentoBackend] = (), *, aliases: Mapping[str, str] | None = None,
                interval_s: float = DEFAULT_INTERVAL_S, same_port: bool = False
                ) -> AliasWatcher:
    """Start following the Bento service's aliases (``ADPLATFORM_BENTO_ALIAS`` by default)."""
    from serving.bento.models import ALIAS_ENV, parse_aliases

    watched = dict(aliases) if aliases is not None else parse_aliases(process.env.get(ALIAS_ENV))
    follower = BentoFollower(process, clients, same_port=same_port)
    served = follower.served_versions(process.url)
    watcher = AliasWatcher(watched, settings=settings, interval_s=interval_s)
    watcher.subscribe(follower, {n: served.get(n) for n in watched})
    return watcher.start()


__all__ = ["DEFAULT_INTERVAL_S", "MODEL_NAMES", "AliasWatcher", "BentoFollower",
           "MlflowVersionSource", "OnnxFollower", "Subscriber", "TritonFollower",
           "VersionSource", "backoff_s", "probe_model", "watch_backend", "watch_bento",
           "watch_triton"]
