"""The bid-shading model: a deep distribution network for the highest competing bid.

An MLP reads the shading feature vector (``features.vectorize.SHADING_FEATURES``) and
outputs a mixture of M log-normal distributions of the highest competing bid C (CPM)::

    x (R, F) -> transform (log / standardise / hour as sin, cos) -> MLP -> (R, 3M)
             -> weights = softmax(logits), mu, sigma = min_sigma + softplus(raw)

A log-normal mixture because prices are positive and right-skewed and, in a first-price
market, C is a max over several kinds of buyers, each with its own price level: one
log-normal per kind, with context-dependent weights, fits that shape and any smooth
landscape besides, and its CDF is closed-form for the pricer.

It is trained by censored maximum likelihood (:func:`censored_nll`): each auction says
something different about C (see :class:`Censoring`). The exported ONNX graph outputs
the landscape ``[weights, mu, sigma]`` (R, 3M), which :mod:`models.shading_landscape`
turns into a bid without torch.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the torch convention

log = logging.getLogger(__name__)

INPUT_NAME = "shading_features"
OUTPUT_NAME = "landscape"
ONNX_OPSET = 18   # what the torch exporter (dynamo) emits natively; onnxruntime runs it


class Censoring(IntEnum):
    """What one auction tells about the highest competing bid C."""

    EXACT = 0      # C = lo: a loss that reported min_bid_to_win above the floor
    LEFT = 1       # C <= hi: a win at bid hi (first price, ties win), or C under the floor
    RIGHT = 2      # C > lo: a loss at bid lo with no report
    INTERVAL = 3   # lo < C <= hi: a price known to a bin (integer prices, DRSA)


@dataclass
class ShadingConfig:
    # -- model
    n_components: int = 4       # 3 kinds of buyers in a market, + 1 for the no-competitor /
                                # under-the-floor mass; more only split components
    hidden: int = 64            # ~11 inputs: width 64 learns their interactions in minutes
    n_layers: int = 3           # depth for interactions (format x hour x device) without
                                # features crossed by hand
    dropout: float = 0.0        # 1e5+ auctions a day: early stopping is regulariser enough
    min_sigma: float = 0.05     # a component cannot collapse onto one observed price
                                # (the likelihood of an exact price is unbounded otherwise)
    # -- optimisation
    lr: float = 3e-3            # Adam; large batches of a smooth likelihood take big steps
    weight_decay: float = 1e-5
    batch_size: int = 2048      # large enough for a stable censored-likelihood gradient
    max_epochs: int = 60        # upper bound; early stopping usually ends much sooner
    patience: int = 5           # epochs without validation improvement before stopping
    val_share: float = 0.1      # the LAST share of training rows (by time) validates
    seed: int = 7
    # -- pipeline
    holdout_days: int = 2       # the last days are held out for evaluation (time split)
    max_train_rows: int = 2_000_000   # newest rows kept: bounds CPU time of one run


class ShadingNet(nn.Module):
    """MLP -> log-normal mixture of the highest competing bid.

    The input transform is part of the module (and of the ONNX graph), so serving feeds
    the raw shading feature vector: ``log1p`` on count/price columns, standardisation by
    training statistics, hour of day as (sin, cos).
    """

    log_mask: torch.Tensor      # (F,) 1 where the column enters as sign(x) log(1 + |x|)
    mean: torch.Tensor          # (F,) training mean after the log transform
    std: torch.Tensor           # (F,) training standard deviation (1 for constant columns)

    def __init__(self, n_features: int, config: ShadingConfig, *,
                 log_columns: tuple[int, ...] = (), hour_columns: tuple[int, ...] = (),
                 mean: np.ndarray | None = None, std: np.ndarray | None = None,
                 mu_init: np.ndarray | None = None) -> None:
        super().__init__()
        m = config.n_components
        self.n_features, self.m, self.min_sigma = n_features, m, config.min_sigma
        log_mask = torch.zeros(n_features)
        log_mask[list(log_columns)] = 1.0
        self.register_buffer("log_mask", log_mask)                        # (F,)
        self.register_buffer("mean", torch.as_tensor(
            np.zeros(n_features) if mean is None else mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(
            np.ones(n_features) if std is None else std, dtype=torch.float32))
        width = n_features + 2 * len(hour_columns)
        layers: list[nn.Module] = []
        for _ in range(config.n_layers):
            layers += [nn.Linear(width, config.hidden), nn.SiLU()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = config.hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 3 * m)
        self.hour_index = list(hour_columns)
        with torch.no_grad():
            # Start near a context-free landscape: small head weights, components spread
            # over the quantiles of observed prices, sigma ~ 0.5 (a factor 1.6 in price).
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            mus = (torch.linspace(-1.0, 2.0, m) if mu_init is None
                   else torch.as_tensor(mu_init, dtype=torch.float32))
            self.head.bias[m:2 * m] = mus
            self.head.bias[2 * m:] = math.log(math.expm1(max(0.5 - config.min_sigma, 1e-3)))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """(R, F) raw features -> (R, F + 2H) network inputs."""
        x = torch.nan_to_num(x, nan=0.0)
        logged = torch.sign(x) * torch.log1p(torch.abs(x))
        x = self.log_mask * logged + (1.0 - self.log_mask) * x             # (R, F)
        z = (x - self.mean) / self.std                                     # (R, F)
        if not self.hour_index:
            return z
        angle = x[:, self.hour_index] * (2.0 * math.pi / 24.0)            # (R, H)
        return torch.cat([z, torch.sin(angle), torch.cos(angle)], dim=1)

    def components(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(R, F) -> log weights (R, M), mu (R, M), sigma (R, M)."""
        out = self.head(self.body(self.transform(x)))                      # (R, 3M)
        m = self.m
        log_w = F.log_softmax(out[:, :m], dim=1)
        sigma = self.min_sigma + F.softplus(out[:, 2 * m:])
        return log_w, out[:, m:2 * m], sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, F) -> landscape (R, 3M) = [weights, mu, sigma] (the serving output)."""
        log_w, mu, sigma = self.components(x)
        return torch.cat([torch.exp(log_w), mu, sigma], dim=1)


# ---------------------------------------------------------------------- likelihood

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _log_diff_ndtr(z_lo: torch.Tensor, z_hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(z_hi) - Phi(z_lo)) for z_lo < z_hi, accurate in both tails."""
    # In the upper tail use the mirrored form Phi(-z_lo) - Phi(-z_hi): both terms small.
    upper = z_lo > 0
    a = torch.where(upper, -z_hi, z_lo)
    b = torch.where(upper, -z_lo, z_hi)
    log_b = torch.special.log_ndtr(b)
    log_a = torch.special.log_ndtr(a)
    # log(e^lb - e^la) = lb + log(1 - e^(la - lb)); clamp keeps the gradient finite.
    return log_b + torch.log(-torch.expm1(torch.clamp(log_a - log_b, max=-1e-12)))


def censored_loglik(log_w: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                    kind: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Per-row log-likelihood (R,) of censored observations of C under the mixture.

    ``log_w``, ``mu``, ``sigma`` are (R, M); ``kind`` (R,) holds :class:`Censoring` codes;
    ``lo``/``hi`` (R,) the bounds (unused bounds are ignored, but must be finite).

    * EXACT: log density of C at ``lo`` (a log-normal density in price, so the
      ``-log lo`` Jacobian is included and likelihoods compare across models);
    * LEFT: log P(C <= hi); RIGHT: log P(C > lo); INTERVAL: log P(lo < C <= hi).
    """
    out = torch.zeros_like(lo)
    tiny = torch.finfo(lo.dtype).tiny
    log_lo = torch.log(torch.clamp(lo, min=tiny))[:, None]               # (R, 1)
    log_hi = torch.log(torch.clamp(hi, min=tiny))[:, None]
    z_lo = (log_lo - mu) / sigma                                          # (R, M)
    z_hi = (log_hi - mu) / sigma
    # Each kind on its own rows: a branch's -inf must not leak NaN gradients to others.
    for code in Censoring:
        rows = torch.nonzero(kind == code, as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        lw = log_w[rows]
        if code == Censoring.EXACT:
            comp = (-0.5 * z_lo[rows] ** 2 - _LOG_SQRT_2PI - torch.log(sigma[rows])
                    - log_lo[rows])
        elif code == Censoring.LEFT:
            comp = torch.special.log_ndtr(z_hi[rows])
        elif code == Censoring.RIGHT:
            comp = torch.special.log_ndtr(-z_lo[rows])
        else:
            comp = _log_diff_ndtr(z_lo[rows], z_hi[rows])
        out = out.index_put((rows,), torch.logsumexp(lw + comp, dim=1))
    return out


def censored_nll(model: ShadingNet, x: torch.Tensor, kind: torch.Tensor, lo: torch.Tensor,
                 hi: torch.Tensor) -> torch.Tensor:
    """Mean negative censored log-likelihood of a batch (scalar)."""
    log_w, mu, sigma = model.components(x)
    return -censored_loglik(log_w, mu, sigma, kind, lo, hi).mean()


@dataclass
class CensoredData:
    """Rows for training: features (N, F) float32 and the censoring of C per row."""

    x: np.ndarray          # (N, F) float32
    kind: np.ndarray       # (N,) int64, Censoring codes
    lo: np.ndarray         # (N,) float64
    hi: np.ndarray         # (N,) float64

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.x.ndim != 2 or any(len(a) != n for a in (self.kind, self.lo, self.hi)):
            raise ValueError("CensoredData: x must be (N, F) and kind/lo/hi (N,)")

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, idx: np.ndarray | slice) -> CensoredData:
        return CensoredData(self.x[idx], self.kind[idx], self.lo[idx], self.hi[idx])

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(np.ascontiguousarray(self.x, dtype=np.float32)),
                torch.from_numpy(self.kind.astype(np.int64)),
                torch.from_numpy(self.lo.astype(np.float32)),
                torch.from_numpy(self.hi.astype(np.float32)))

    def price_points(self) -> np.ndarray:
        """Every finite price bound in the data (for initialising component locations)."""
        pts = np.concatenate([self.lo[self.kind != Censoring.LEFT],
                              self.hi[self.kind != Censoring.RIGHT]])
        return pts[np.isfinite(pts) & (pts > 0)]


@dataclass
class FitResult:
    model: ShadingNet
    train_nll: float
    val_nll: float
    epochs: int
    history: list[tuple[float, float]]     # (train, validation) NLL per epoch


def build_model(data: CensoredData, config: ShadingConfig, *,
                log_columns: tuple[int, ...] = (),
                hour_columns: tuple[int, ...] = ()) -> ShadingNet:
    """A ShadingNet whose input statistics and initial locations come from ``data``."""
    x = np.nan_to_num(data.x.astype(np.float64), nan=0.0)
    cols = list(log_columns)
    x[:, cols] = np.sign(x[:, cols]) * np.log1p(np.abs(x[:, cols]))
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)                  # constant columns pass through
    pts = np.log(data.price_points())
    m = config.n_components
    mu_init = (np.quantile(pts, (np.arange(m) + 0.5) / m) if pts.size
               else np.linspace(-1.0, 2.0, m))
    return ShadingNet(data.x.shape[1], config, log_columns=log_columns,
                      hour_columns=hour_columns, mean=mean, std=std, mu_init=mu_init)


def _mean_nll(model: ShadingNet, tensors: tuple[torch.Tensor, ...], batch: int) -> float:
    x, kind, lo, hi = tensors
    total, n = 0.0, x.shape[0]
    with torch.no_grad():
        for s in range(0, n, batch * 8):
            e = min(n, s + batch * 8)
            total += float(censored_nll(model, x[s:e], kind[s:e], lo[s:e], hi[s:e])) * (e - s)
    return total / max(n, 1)


def fit(train: CensoredData, val: CensoredData, config: ShadingConfig | None = None, *,
        log_columns: tuple[int, ...] = (), hour_columns: tuple[int, ...] = ()) -> FitResult:
    """Minimise the censored NLL with Adam; early-stop on ``val``; return the best model."""
    cfg = config or ShadingConfig()
    if len(train) == 0 or len(val) == 0:
        raise ValueError("fit needs non-empty train and validation data")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(train, cfg, log_columns=log_columns, hour_columns=hour_columns)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.3, patience=1)
    tr, va = train.tensors(), val.tensors()
    n = len(train)
    best_state, best_val, best_tr, bad = copy.deepcopy(model.state_dict()), math.inf, math.inf, 0
    history: list[tuple[float, float]] = []
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        running = 0.0
        for s in range(0, n, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            loss = censored_nll(model, tr[0][idx], tr[1][idx], tr[2][idx], tr[3][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            running += loss.detach().item() * len(idx)
        model.eval()
        val_nll = _mean_nll(model, va, cfg.batch_size)
        history.append((running / n, val_nll))
        sched.step(val_nll)
        log.info("shading epoch %d: train nll %.4f, val nll %.4f", epoch, running / n, val_nll)
        if val_nll < best_val - 1e-4:
            best_val, best_tr, bad = val_nll, running / n, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(model=model, train_nll=best_tr, val_nll=best_val, epochs=epoch,
                     history=history)


def predict_landscape(model: ShadingNet, x: np.ndarray, *, batch: int = 65536) -> np.ndarray:
    """Torch landscape (R, 3M) float32 for (R, F) features (evaluation, parity checks)."""
    model.eval()
    outs = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            outs.append(model(torch.from_numpy(
                np.ascontiguousarray(x[s:s + batch], dtype=np.float32))).numpy())
    if not outs:
        return np.zeros((0, 3 * model.m), dtype=np.float32)
    return np.concatenate(outs)


# ---------------------------------------------------------------------- ONNX

def export_onnx(model: ShadingNet, path: Path | None = None, *, doc: str = "") -> Any:
    """Export to ONNX: input ``shading_features`` (R, F) -> output ``landscape`` (R, 3M).

    Uses the torch (dynamo) exporter with a dynamic batch axis; returns the
    ``onnx.ModelProto`` (and writes it to ``path`` when given).
    """
    import onnx

    model.eval()
    example = torch.zeros(2, model.n_features)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                                opset_version=ONNX_OPSET, dynamo=True, verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.optimize()
    proto = program.model_proto
    proto.doc_string = doc or f"bid-shading landscape: {model.m} log-normal components"
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save_model(proto, str(path))
    return proto


def onnx_landscape(proto: Any, x: np.ndarray) -> np.ndarray:
    """Run an exported shading model once (parity checks); serving keeps a session open."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return np.asarray(sess.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0])


def parity(model: ShadingNet, proto: Any, x: np.ndarray) -> dict[str, float]:
    """ONNX vs torch on rows ``x``: share within 1e-5, share within 1e-3, max abs diff."""
    diff = np.abs(onnx_landscape(proto, x) - predict_landscape(model, x))
    if diff.size == 0:
        return {"within_1e-5": 1.0, "within_1e-3": 1.0, "max_abs_diff": 0.0}
    return {"within_1e-5": float((diff <= 1e-5).mean()),
            "within_1e-3": float((diff <= 1e-3).mean()), "max_abs_diff": float(diff.max())}


__all__ = ["INPUT_NAME", "ONNX_OPSET", "OUTPUT_NAME", "CensoredData", "Censoring", "FitResult",
           "ShadingConfig", "ShadingNet", "build_model", "censored_loglik", "censored_nll",
           "export_onnx", "fit", "onnx_landscape", "parity", "predict_landscape"]
