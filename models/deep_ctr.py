"""DCN-v2 (Wang et al., 2021) click-through model over one float32 feature matrix.

The serving contract is the LightGBM one: input ``ctr_features`` float32 (K, F), output
``pctr`` float32 (K,). So the model does its own input preparation inside the graph,
from statistics fitted on the training rows (:class:`InputSpec`):

* numeric columns: signed ``log1p`` for heavy-tailed counts, then standardised; NaN
  becomes the training mean (0 after standardising) and values are clipped to ±8
  standard deviations, so an unseen extreme cannot blow up the logit;
* vocabulary columns (small categoricals written as numbers: hour, device type, format,
  topic, slot size): equality against the training vocabulary, index 0 for unseen
  values and NaN — no Python dict in the serving path, nothing outside the graph;
* code columns (large id spaces encoded by the caller as integers in ``[1, cardinality)``,
  0 = rare/unseen, e.g. hashed Criteo categoricals): used directly as embedding indices.
  Codes are small integers, exact in float32 (below 2**24), unlike raw 32-bit ids.

The network is the stacked DCN-v2: embeddings and numeric values are concatenated into
x0, ``cross_layers`` full-rank cross layers ``x_{l+1} = x0 * (W x_l + b) + x_l`` model
bounded-degree feature interactions explicitly, then an MLP and a logistic output.
``forward`` returns a probability, so :func:`models.calibration.append_calibration`
can follow it in the exported graph.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from torch import nn

from models.calibration import Calibrator, append_calibration

log = logging.getLogger(__name__)

CLIP_SD = 8.0   # standardised numeric inputs are clipped to this many standard deviations


@dataclass
class InputSpec:
    """Column roles and the statistics fitted on training rows (pure numpy, picklable)."""

    n_features: int
    numeric: list[int] = field(default_factory=list)            # column indices
    log_transform: list[bool] = field(default_factory=list)     # signed log1p per numeric column
    mean: list[float] = field(default_factory=list)             # after the transform
    std: list[float] = field(default_factory=list)
    vocab_cols: list[int] = field(default_factory=list)
    vocabs: list[list[float]] = field(default_factory=list)     # values seen per vocab column
    code_cols: list[int] = field(default_factory=list)
    cardinalities: list[int] = field(default_factory=list)      # per code column, incl. code 0

    @classmethod
    def fit(cls, x: np.ndarray, *, vocab_cols: list[int] | None = None,
            code_cols: dict[int, int] | None = None, max_vocab: int = 256) -> InputSpec:
        """Fit on training rows ``x`` (N, F). Unlisted columns are numeric.

        ``code_cols`` maps a column to its cardinality (codes ``0..card-1``).
        """
        x = np.asarray(x, dtype=np.float32)
        vocab_cols = list(vocab_cols or [])
        codes = dict(code_cols or {})
        if set(vocab_cols) & set(codes):
            raise ValueError("a column cannot be both a vocabulary and a code column")
        spec = cls(n_features=x.shape[1], vocab_cols=vocab_cols, code_cols=list(codes),
                   cardinalities=[int(c) for c in codes.values()])
        for c in vocab_cols:
            vals = x[:, c][~np.isnan(x[:, c])]
            uniq, counts = np.unique(vals, return_counts=True)
            keep = uniq[np.argsort(-counts, kind="stable")[:max_vocab]]   # most frequent
            spec.vocabs.append(sorted(float(v) for v in keep))
        for c in range(x.shape[1]):
            if c in vocab_cols or c in codes:
                continue
            col = x[:, c].astype(np.float64)
            finite = col[np.isfinite(col)]
            heavy = bool(len(finite) and np.abs(finite).max() > 10.0)
            t = np.sign(finite) * np.log1p(np.abs(finite)) if heavy else finite
            spec.numeric.append(c)
            spec.log_transform.append(heavy)
            spec.mean.append(float(t.mean()) if len(t) else 0.0)
            spec.std.append(float(t.std()) if len(t) and t.std() > 1e-6 else 1.0)
        return spec


@dataclass
class DCNConfig:
    """DCN-v2 architecture. Defaults suit ~30-40 input columns and ~10^5-10^6 rows."""

    embed_dim: int = 8              # small vocabularies (<= 64 values): 8 dims is plenty
    # Code columns get min(embed_dim_max, ~1.6 * card^0.56) dims (the fastai rule of thumb):
    # rare ids should not each own a wide vector on 8,000-row data sets.
    embed_dim_max: int = 16
    cross_layers: int = 2           # degree-3 interactions; a third layer did not help here
    deep_layers: tuple[int, ...] = (128, 64)   # the MLP after the cross network
    dropout: float = 0.1            # light: early stopping is the main regulariser


class DCNv2(nn.Module):
    """(B, F) float32 raw features -> (B,) click probability."""

    # Buffers (fitted input statistics; saved with the state dict, constants in ONNX).
    num_idx: torch.Tensor      # (Nn,) long
    num_log: torch.Tensor      # (Nn,) bool
    num_mean: torch.Tensor     # (Nn,)
    num_std: torch.Tensor      # (Nn,)
    vocab: torch.Tensor        # (C, Vmax), NaN padded
    vocab_idx: torch.Tensor    # (C,) long
    vocab_pos: torch.Tensor    # (Vmax,) 1..Vmax
    code_idx: torch.Tensor     # (K,) long
    code_card: torch.Tensor    # (K,)

    def __init__(self, spec: InputSpec, cfg: DCNConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DCNConfig()
        self.spec, self.cfg = spec, cfg
        n_num = len(spec.numeric)
        self.register_buffer("num_idx", torch.tensor(spec.numeric, dtype=torch.long))
        self.register_buffer("num_log", torch.tensor(spec.log_transform, dtype=torch.bool))
        self.register_buffer("num_mean", torch.tensor(spec.mean, dtype=torch.float32))
        self.register_buffer("num_std", torch.tensor(spec.std, dtype=torch.float32))
        # Vocabulary lookup: (C, Vmax) values padded with NaN (NaN equals nothing).
        vmax = max((len(v) for v in spec.vocabs), default=1)
        table = np.full((len(spec.vocabs), vmax), np.nan, dtype=np.float32)
        for i, v in enumerate(spec.vocabs):
            table[i, :len(v)] = v
        self.register_buffer("vocab", torch.from_numpy(table))
        self.register_buffer("vocab_idx", torch.tensor(spec.vocab_cols, dtype=torch.long))
        self.register_buffer("vocab_pos", torch.arange(1, vmax + 1, dtype=torch.float32))
        self.vocab_emb = nn.ModuleList(nn.Embedding(len(v) + 1, cfg.embed_dim)
                                       for v in spec.vocabs)
        self.register_buffer("code_idx", torch.tensor(spec.code_cols, dtype=torch.long))
        self.register_buffer("code_card", torch.tensor(spec.cardinalities, dtype=torch.float32))
        code_dims = [min(cfg.embed_dim_max, max(2, round(1.6 * c ** 0.56)))
                     for c in spec.cardinalities]
        self.code_emb = nn.ModuleList(nn.Embedding(c, d)
                                      for c, d in zip(spec.cardinalities, code_dims, strict=True))
        d0 = n_num + cfg.embed_dim * len(spec.vocabs) + sum(code_dims)
        self.cross = nn.ModuleList(nn.Linear(d0, d0) for _ in range(cfg.cross_layers))
        layers: list[nn.Module] = []
        width = d0
        for h in cfg.deep_layers:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = h
        self.deep = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        self.d0 = d0

    def set_prior(self, rate: float) -> None:
        """Start the output at the base rate (log-odds bias), so early steps fit structure."""
        rate = min(max(rate, 1e-6), 1 - 1e-6)
        with torch.no_grad():
            self.head.bias.fill_(math.log(rate / (1 - rate)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        if len(self.spec.numeric):
            v = x.index_select(1, self.num_idx)                               # (B, Nn)
            v = torch.where(self.num_log, torch.sign(v) * torch.log1p(torch.abs(v)), v)
            v = (v - self.num_mean) / self.num_std
            v = torch.where(torch.isnan(v), torch.zeros_like(v), v)           # NaN -> mean
            parts.append(torch.clamp(v, -CLIP_SD, CLIP_SD))
        if len(self.spec.vocabs):
            c = x.index_select(1, self.vocab_idx).unsqueeze(-1)               # (B, C, 1)
            hit = (c == self.vocab).to(torch.float32)                         # (B, C, Vmax)
            idx = (hit * self.vocab_pos).sum(-1).to(torch.long)               # (B, C); 0 unseen
            parts += [emb(idx[:, i]) for i, emb in enumerate(self.vocab_emb)]  # (B, E) each
        if len(self.spec.code_cols):
            c = x.index_select(1, self.code_idx)                              # (B, K)
            c = torch.where(torch.isnan(c), torch.zeros_like(c), c)
            c = torch.where((c >= 0) & (c < self.code_card), c, torch.zeros_like(c))
            idx = c.to(torch.long)
            parts += [emb(idx[:, i]) for i, emb in enumerate(self.code_emb)]
        x0 = torch.cat(parts, dim=1)                                          # (B, D0)
        xl = x0
        for layer in self.cross:
            xl = x0 * layer(xl) + xl                                          # (B, D0)
        return self.head(self.deep(xl)).squeeze(-1)                           # (B,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))                                  # (B,)


@dataclass
class DeepTrainConfig:
    """Optimisation of :class:`DCNv2` (Adam, early stopping on a validation split)."""

    epochs: int = 8                 # upper bound; early stopping usually ends sooner
    batch_size: int = 1024          # large batches: clicks are rare, gradients are noisy
    lr: float = 2e-3                # Adam; decayed by cosine over the epochs
    weight_decay: float = 1e-6      # embeddings of rare ids must not grow without bound
    patience: int = 2               # epochs without validation improvement before stopping
    # One intra-op thread: the network is small, so extra threads mostly wait on each other
    # (measured 25 ms/step with 1 thread vs 490 ms with 2 on a busy 2-core machine).
    threads: int = 1
    seed: int = 7


def _bce(logit: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    loss = nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none")
    return (loss * w).sum() / w.sum()


def predict(model: DCNv2, x: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """(N,) float64 probabilities from the native torch model (eval mode)."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32))
            out.append(model(xb).numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros(0)


def fit(model: DCNv2, x: np.ndarray, y: np.ndarray, *, x_val: np.ndarray, y_val: np.ndarray,
        w: np.ndarray | None = None, w_val: np.ndarray | None = None,
        cfg: DeepTrainConfig | None = None) -> dict[str, list[float]]:
    """Train in place; keeps the weights of the best validation log-loss epoch."""
    cfg = cfg or DeepTrainConfig()
    if len(x) != len(y) or len(x_val) != len(y_val):
        raise ValueError("features and labels differ in length")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))          # (N, F)
    yt = torch.from_numpy(np.asarray(y, dtype=np.float32))                    # (N,)
    wt = torch.from_numpy(np.ones(len(y), np.float32) if w is None else np.asarray(w, np.float32))
    xv = torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float32))
    yv = torch.from_numpy(np.asarray(y_val, dtype=np.float32))
    wv = torch.from_numpy(np.ones(len(y_val), np.float32) if w_val is None
                          else np.asarray(w_val, np.float32))
    model.set_prior(float(np.average(y, weights=None if w is None else w)))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, math.ceil(len(x) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history: dict[str, list[float]] = {"train_loss": [], "val_logloss": []}
    best, best_state, stale = float("inf"), None, 0
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for i in range(0, len(x), cfg.batch_size):
            b = order[i:i + cfg.batch_size]
            loss = _bce(model.logits(xt[b]), yt[b], wt[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        model.eval()
        with torch.no_grad():
            val = float(_bce(model.logits(xv), yv, wv))
        history["train_loss"].append(total / len(x))
        history["val_logloss"].append(val)
        log.info("dcnv2 epoch %d: train %.5f, validation %.5f", epoch + 1, total / len(x), val)
        if val < best - 1e-6:
            best, stale = val, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def deep_to_onnx(model: DCNv2, *, input_name: str, output_name: str, doc: str = "",
                 calibrator: Calibrator | None = None) -> onnx.ModelProto:
    """Export with torch's (dynamo) exporter, dynamic batch axis; calibration appended."""
    model.eval()
    example = torch.zeros(4, model.spec.n_features, dtype=torch.float32)
    raw = output_name if calibrator is None else f"{output_name}_uncalibrated"
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=[input_name],
                                output_names=[raw], dynamic_shapes=({0: batch},),
                                optimize=True, verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    proto = onnx.ModelProto()
    proto.CopyFrom(program.model_proto)
    # The exporter names the batch axis; keep a plain dynamic dimension in the contract.
    for vi in (*proto.graph.input, *proto.graph.output):
        dim = vi.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"
    if calibrator is not None:
        append_calibration(proto, calibrator, prob_output=raw, output_name=output_name)
    proto.doc_string = doc
    onnx.checker.check_model(proto)
    return proto


__all__ = ["DCNConfig", "DCNv2", "DeepTrainConfig", "InputSpec", "deep_to_onnx", "fit",
           "predict"]
