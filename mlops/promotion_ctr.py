"""The CTR model's promotion gates: quality, calibration, ONNX parity, latency.

Candidate and champion are scored on the same held-out rows: the test split that
:func:`training.ctr.prepare_ctr_data` builds from the current event log (the last
``holdout_days`` days, IVT excluded), with the candidate's training settings for the
split. Both are scored through :class:`serving.onnx_backend.OnnxBackend`, i.e. exactly
as the in-process backend serves them. When a model's ``training_window`` tag reaches
into the held-out window its metrics are optimistic; the report notes it.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from adplatform.config import Settings
from mlops.promotion import GateReport, GateResult, PromotionConfig
from mlops.registry import ResolvedModel, configure

if TYPE_CHECKING:
    from serving.onnx_backend import OnnxBackend
    from training.ctr import CTRDataConfig

log = logging.getLogger(__name__)

LATENCY_AUCTIONS = 256           # distinct auctions cycled through by the latency loop
LATENCY_WARMUP = 200


@dataclass(frozen=True)
class CtrHeldOut:
    """Held-out rows: the ``ctr_v1`` matrix, clicks, and the time window they cover."""

    x: np.ndarray            # (N, F) float32
    y: np.ndarray            # (N,) 0/1
    start: str               # ISO time of the first and last row
    end: str

    def describe(self) -> dict[str, str]:
        return {"held-out window": f"{self.start} .. {self.end}",
                "held-out rows": str(len(self.y)), "held-out clicks": str(int(self.y.sum()))}


def data_config_for(settings: Settings, candidate: ResolvedModel) -> CTRDataConfig:
    """The split settings the candidate was trained with (its run's params)."""
    from training.ctr import CTRDataConfig

    cfg = CTRDataConfig()
    client = configure(settings)
    run_id = client.get_model_version(candidate.name, candidate.version).run_id
    if not run_id:
        return cfg
    params = client.get_run(run_id).data.params
    if params.get("holdout_days", "").isdigit():
        cfg.holdout_days = int(params["holdout_days"])
    if params.get("exclude") == "None":
        cfg.exclude = None
    return cfg


def ctr_heldout(settings: Settings, data_config: CTRDataConfig | None = None) -> CtrHeldOut:
    """Rebuild the CTR test split from the event log the way training does."""
    from training.ctr import CTRDataConfig, prepare_ctr_data

    data = prepare_ctr_data(settings, data_config or CTRDataConfig())
    ts = data.test.frame["event_timestamp"]
    return CtrHeldOut(x=np.ascontiguousarray(data.test.x, dtype=np.float32),
                      y=np.asarray(data.test.y, dtype=np.float64),
                      start=ts.min().isoformat(), end=ts.max().isoformat())


def _open(model: ResolvedModel) -> OnnxBackend:
    from serving.onnx_backend import ModelFile, OnnxBackend

    return OnnxBackend([ModelFile(name="ctr", version=model.version, path=model.onnx_path)])


def _score(backend: OnnxBackend, x: np.ndarray) -> np.ndarray:
    from serving.base import AuctionInputs

    return np.asarray(backend.score(AuctionInputs(ctr=x)).pctr, dtype=np.float64).reshape(-1)


def _window_end(model: ResolvedModel) -> str | None:
    window = model.tags.get("training_window", "")
    return window.split("/")[-1] if "/" in window else None


def leakage_notes(heldout: CtrHeldOut, *models: ResolvedModel | None) -> list[str]:
    notes = []
    for m in models:
        end = _window_end(m) if m is not None else None
        if m is not None and end is not None and end >= heldout.start:
            notes.append(f"version {m.version} trained on data up to {end}, inside the held-out "
                         f"window from {heldout.start}: its metrics are optimistic")
    return notes


# ---------------------------------------------------------------------- gates

def quality_gate(y: np.ndarray, p: np.ndarray, p_champion: np.ndarray | None,
                 config: PromotionConfig) -> GateResult:
    from training.metrics import auc, logloss

    a, ll = auc(y, p), logloss(y, p)
    m = {"auc": a, "logloss": ll, "rows": float(len(y)), "clicks": float(y.sum())}
    if p_champion is None:
        ok = math.isfinite(a) and a > config.min_auc
        return GateResult("quality", ok, f"AUC {a:.4f} {'>' if ok else '<='} {config.min_auc} "
                          f"(no champion to compare with); logloss {ll:.5f}", m)
    ca, cll = auc(y, p_champion), logloss(y, p_champion)
    m.update({"champion_auc": ca, "champion_logloss": cll, "delta_auc": a - ca,
              "delta_logloss": ll - cll})
    auc_ok = math.isfinite(a) and a >= ca - config.auc_tolerance
    ll_ok = math.isfinite(ll) and ll <= cll + config.logloss_tolerance
    reason = (f"AUC {a:.4f} vs champion {ca:.4f} ({a - ca:+.4f}, allowed "
              f">= -{config.auc_tolerance:g}){'' if auc_ok else ' WORSE'}; logloss {ll:.5f} vs "
              f"{cll:.5f} ({ll - cll:+.5f}, allowed <= +{config.logloss_tolerance:g})"
              f"{'' if ll_ok else ' WORSE'}")
    return GateResult("quality", auc_ok and ll_ok, reason, m)


def calibration_gate(y: np.ndarray, p: np.ndarray, p_champion: np.ndarray | None,
                     config: PromotionConfig) -> GateResult:
    clicks, expected = float(y.sum()), float(p.sum())
    ratio = clicks / expected if expected > 0 else math.inf
    # Poisson noise on the observed clicks: how much of a miss the data can explain.
    half = 1.96 / math.sqrt(clicks) if clicks > 0 else math.inf
    m = {"observed_expected": ratio, "clicks": clicks, "expected_clicks": expected,
         "ratio_low95": ratio * max(1.0 - half, 0.0), "ratio_high95": ratio * (1.0 + half)}
    if p_champion is not None:
        m["champion_observed_expected"] = clicks / max(float(p_champion.sum()), 1e-12)
    inside = config.calibration_low <= ratio <= config.calibration_high
    # Refuse only a miss the data can show: when the 95% interval of the ratio still
    # overlaps the band, too few clicks were held out to call the model miscalibrated.
    overlaps = (m["ratio_low95"] <= config.calibration_high
                and m["ratio_high95"] >= config.calibration_low)
    ok = inside or overlaps
    verdict = "within" if inside else ("outside but within noise of" if ok else "OUTSIDE")
    reason = (f"observed/expected {ratio:.3f} ({clicks:.0f} clicks / {expected:.1f} expected; "
              f"95% {m['ratio_low95']:.2f}-{m['ratio_high95']:.2f}) {verdict} "
              f"[{config.calibration_low:g}, {config.calibration_high:g}]")
    return GateResult("calibration", ok, reason, m)


def _contract_problems(sess: object, champion_width: int | None) -> tuple[list[str], int | None]:
    from features.vectorize import CTR_FEATURES
    from training.ctr import INPUT_NAME, OUTPUT_NAME

    inputs, outputs = sess.get_inputs(), sess.get_outputs()  # type: ignore[attr-defined]
    problems: list[str] = []
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        problems.append(f"tensors {[i.name for i in inputs]} -> {[o.name for o in outputs]}, "
                        f"contract {INPUT_NAME!r} -> {OUTPUT_NAME!r}")
        return problems, None
    inp, out = inputs[0], outputs[0]
    if inp.type != "tensor(float)" or out.type != "tensor(float)":
        problems.append(f"types {inp.type} -> {out.type}, contract float -> float")
    width = inp.shape[1] if len(inp.shape) == 2 and isinstance(inp.shape[1], int) else None
    if len(inp.shape) != 2 or isinstance(inp.shape[0], int):
        problems.append(f"input shape {inp.shape}: need (batch, features), batch dynamic")
    want = champion_width if champion_width is not None else len(CTR_FEATURES)
    if width != want:
        problems.append(f"reads {width} features; the champion and ctr_v1 read {want}")
    if len(out.shape) != 1:
        problems.append(f"output shape {out.shape}: need (batch,)")
    return problems, width


def _width(model: ResolvedModel | None) -> int | None:
    import onnxruntime as ort

    if model is None:
        return None
    shape = ort.InferenceSession(str(model.onnx_path),
                                 providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None


def parity_gate(candidate: ResolvedModel, served: OnnxBackend | None, load_error: str | None,
                champion: ResolvedModel | None, x: np.ndarray, run_metrics: dict[str, float],
                config: PromotionConfig) -> GateResult:
    """Contract, output range, served-vs-reference agreement, recorded native parity."""
    import onnxruntime as ort

    from models.lgbm_onnx import PARITY_MAX, PARITY_SHARE, parity, stress_rows
    from training.ctr import ctr_unseen_categories

    if served is None:
        return GateResult("parity", False, f"the ONNX model does not load: {load_error}")
    ref = ort.InferenceSession(str(candidate.onnx_path), providers=["CPUExecutionProvider"])
    problems, _ = _contract_problems(ref, _width(champion))
    if problems:
        return GateResult("parity", False, "contract: " + "; ".join(problems))
    base = x[:config.parity_rows]
    rows = np.vstack([base, stress_rows(base, categorical=ctr_unseen_categories(),
                                        seed=config.seed)]).astype(np.float32)
    reference = np.asarray(ref.run(None, {ref.get_inputs()[0].name: rows})[0], dtype=np.float64)
    m: dict[str, float] = {"rows": float(len(rows))}
    if reference.shape != (len(rows),):
        return GateResult("parity", False, f"output shape {reference.shape} for {len(rows)} "
                          "rows", m)
    bad = ~np.isfinite(reference) | (reference < 0.0) | (reference > 1.0)
    m["outside_0_1"] = float(bad.sum())
    agree = parity(reference, _score(served, rows))
    m.update({"served_max_abs_diff": agree.max_abs_diff,
              "served_share_within_tol": agree.share_within_tol})
    if bad.any():
        problems.append(f"{int(bad.sum())} of {len(rows)} outputs not finite in [0, 1]")
    if not agree.ok:
        problems.append(f"served session disagrees with the reference: max |diff| "
                        f"{agree.max_abs_diff:.3g}")
    share, worst = run_metrics.get("onnx_parity_share"), run_metrics.get("onnx_max_abs_diff")
    native = "native parity not recorded at training"
    if share is not None and worst is not None:
        m.update({"native_parity_share": share, "native_max_abs_diff": worst})
        native = f"native parity {share:.4%} within tol, max |diff| {worst:.2g}"
        if share < PARITY_SHARE or worst > PARITY_MAX:
            problems.append(f"training recorded {native} (need {PARITY_SHARE:.1%}, "
                            f"<= {PARITY_MAX:g})")
    if problems:
        return GateResult("parity", False, "; ".join(problems), m)
    return GateResult("parity", True, f"contract kept; {len(rows)} held-out + stressed rows "
                      f"finite in [0, 1]; served = reference (max |diff| "
                      f"{agree.max_abs_diff:.2g}); {native}", m)


def auction_latency(backend: OnnxBackend, x: np.ndarray, *, k: int, iterations: int,
                    seed: int) -> tuple[float, float]:
    """(p50, p99) in ms of scoring one auction of ``k`` held-out rows, one call at a time."""
    from serving.base import AuctionInputs

    rng = np.random.default_rng(seed)
    auctions = [AuctionInputs(ctr=np.ascontiguousarray(x[rng.integers(0, len(x), k)]))
                for _ in range(LATENCY_AUCTIONS)]
    for i in range(LATENCY_WARMUP):
        backend.score(auctions[i % LATENCY_AUCTIONS])
    gc.collect()
    took = np.empty(iterations, dtype=np.float64)
    clock = time.perf_counter_ns
    for i in range(iterations):
        t0 = clock()
        backend.score(auctions[i % LATENCY_AUCTIONS])
        took[i] = clock() - t0
    p50, p99 = np.percentile(took, [50, 99]) / 1e6
    return float(p50), float(p99)


def latency_gate(served: OnnxBackend, champion: OnnxBackend | None, x: np.ndarray,
                 config: PromotionConfig) -> GateResult:
    k = config.latency_candidates
    p50, p99 = auction_latency(served, x, k=k, iterations=config.latency_iterations,
                               seed=config.seed)
    m = {"p50_ms": p50, "p99_ms": p99, "budget_ms": config.latency_budget_ms,
         "candidates": float(k), "load_1min": os.getloadavg()[0]}
    if champion is not None:
        _, m["champion_p99_ms"] = auction_latency(champion, x, k=k,
                                                  iterations=config.latency_iterations,
                                                  seed=config.seed)
    ok = p99 <= config.latency_budget_ms
    reason = (f"p99 {p99:.3f} ms (p50 {p50:.3f}) per auction of {k} {'<=' if ok else '>'} "
              f"budget {config.latency_budget_ms:g} ms"
              + (f"; champion p99 {m['champion_p99_ms']:.3f} ms" if champion is not None else ""))
    return GateResult("latency", ok, reason, m)


class CtrGates:
    """The ``ctr`` gates. ``heldout`` reuses a prepared held-out set (else rebuilt)."""

    def __init__(self, heldout: CtrHeldOut | None = None) -> None:
        self.heldout = heldout

    def evaluate(self, settings: Settings, candidate: ResolvedModel,
                 champion: ResolvedModel | None, config: PromotionConfig) -> GateReport:
        heldout = self.heldout or ctr_heldout(settings, data_config_for(settings, candidate))
        notes = leakage_notes(heldout, candidate, champion)
        client = configure(settings)
        run_id = client.get_model_version(candidate.name, candidate.version).run_id
        run_metrics = dict(client.get_run(run_id).data.metrics) if run_id else {}
        served: OnnxBackend | None = None
        load_error: str | None = None
        try:
            served = _open(candidate)
        except Exception as exc:  # noqa: BLE001 - any load failure is the parity gate's finding
            load_error = f"{type(exc).__name__}: {exc}"
        champ: OnnxBackend | None = None
        if champion is not None:
            try:
                champ = _open(champion)
            except Exception as exc:  # noqa: BLE001 - reported; gates compare with nothing
                notes.append(f"champion version {champion.version} does not load ({exc}); "
                             "quality is judged without it")
        try:
            gates = [parity_gate(candidate, served, load_error, champion, heldout.x,
                                 run_metrics, config)]
            gates += self._scored_gates(served, champ, heldout, config, load_error)
        finally:
            for backend in (served, champ):
                if backend is not None:
                    backend.close()
        return GateReport(gates=gates, notes=notes, data=heldout.describe())

    @staticmethod
    def _scored_gates(served: OnnxBackend | None, champion: OnnxBackend | None,
                      heldout: CtrHeldOut, config: PromotionConfig,
                      load_error: str | None) -> list[GateResult]:
        names = ("quality", "calibration", "latency")
        if served is None:
            return [GateResult(n, False, f"cannot score: {load_error}") for n in names]
        try:
            p = _score(served, heldout.x)
        except Exception as exc:  # noqa: BLE001 - a model that cannot score fails its gates
            return [GateResult(n, False, f"scoring failed: {type(exc).__name__}: {exc}")
                    for n in names]
        p_champion = _score(champion, heldout.x) if champion is not None else None
        return [quality_gate(heldout.y, p, p_champion, config),
                calibration_gate(heldout.y, p, p_champion, config),
                latency_gate(served, champion, heldout.x, config)]


__all__ = ["CtrGates", "CtrHeldOut", "auction_latency", "calibration_gate", "ctr_heldout",
           "data_config_for", "latency_gate", "leakage_notes", "parity_gate", "quality_gate"]
