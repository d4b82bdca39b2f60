"""Inputs shared by the reports: decisions, their outcomes, campaigns; one joined frame.

:func:`decision_outcomes` turns the decision log plus the exchange-side tables into one
row per decision ``(request_id, imp_id)`` with 0/1 columns ``bid``, ``won``,
``impression``, ``clicked``, ``converted`` and money columns ``cost`` and ``value``:

* clicks repeat per impression in the log; a decision counts at most one click
  (``clicked`` is "the impression was clicked") and at most one conversion;
* ``value`` is what the campaign pays for the outcome: its CPC times ``clicked`` for a
  CPC campaign, its CPA times ``converted`` for a CPA campaign (NaN when the campaign is
  unknown); ``surplus = value − cost``;
* outcomes are joined by key, not by time: a click on the next day, or a live decision
  logged with the service's wall clock while the exchange runs a simulated clock, still
  lands on its decision.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from adplatform.eventlog import SCHEMAS
from adplatform.workspace import Workspace
from mlops.reports.errors import ReportError

KEY = ["request_id", "imp_id"]
DecisionSource = Literal["all", "events", "live"]
Unit = Literal["user", "request"]


#: Columns the reports read from each outcome table (the rest is never loaded).
OUTCOME_COLUMNS: dict[str, tuple[str, ...]] = {
    "requests": ("ts", "request_id", "imp_id", "user_id", "device_id", "publisher_id"),
    "auctions": ("ts", "request_id", "imp_id", "bid_price", "won", "paid_price",
                 "min_bid_to_win"),
    "impressions": ("ts", "request_id", "imp_id", "campaign_id", "publisher_id", "cost"),
    "clicks": ("ts", "request_id", "imp_id"),
    "conversions": ("ts", "request_id", "imp_id", "campaign_id", "value"),
}


def read_table(root: Path, table: str, *, columns: tuple[str, ...] | None = None,
               start: date | None = None, end: date | None = None) -> pd.DataFrame:
    """Like :func:`adplatform.eventlog.read_events`, reading only ``columns``."""
    schema = SCHEMAS.get(table)
    if schema is None:
        raise ReportError(f"unknown event table {table!r}")
    cols = list(columns or schema.names)
    unknown = sorted(set(cols) - set(schema.names))
    if unknown:
        raise ReportError(f"{table}: no columns {unknown}")

    def keep(p: Path) -> bool:
        d = date.fromisoformat(p.parent.name.removeprefix("date="))
        return (start is None or d >= start) and (end is None or d <= end)

    files = [f for f in sorted((root / table).glob("date=*/*.parquet")) if keep(f)]
    if not files:
        return schema.empty_table().select(cols).to_pandas()
    dataset = ds.dataset([str(f) for f in files], schema=schema, format="parquet")
    return dataset.to_table(columns=cols).to_pandas()


@dataclass(frozen=True)
class Outcomes:
    """The exchange-side event tables, with the columns of :data:`OUTCOME_COLUMNS`."""

    requests: pd.DataFrame
    auctions: pd.DataFrame
    impressions: pd.DataFrame
    clicks: pd.DataFrame
    conversions: pd.DataFrame

    @classmethod
    def empty(cls) -> Outcomes:
        return cls(*(SCHEMAS[t].empty_table().select(list(c)).to_pandas()
                     for t, c in OUTCOME_COLUMNS.items()))

    @classmethod
    def from_events(cls, root: Path, *, start: date | None = None, end: date | None = None,
                    request_columns: tuple[str, ...] = ()) -> Outcomes:
        """Read ``root/<table>`` day partitions in [start, end] (all days by default).

        Impressions, clicks and conversions are read one day past ``end``: they follow
        their request, sometimes after midnight. ``request_columns`` adds request columns
        (the drift report reads the request context).
        """
        late = None if end is None else date.fromordinal(end.toordinal() + 1)
        cols = dict(OUTCOME_COLUMNS)
        cols["requests"] = tuple(dict.fromkeys((*cols["requests"], *request_columns)))
        return cls(**{t: read_table(root, t, columns=c, start=start,
                                    end=end if t in ("requests", "auctions") else late)
                      for t, c in cols.items()})


def load_decisions(workspace: Workspace, *, source: DecisionSource = "all",
                   start: date | None = None, end: date | None = None) -> pd.DataFrame:
    """Decisions from the event log (``events``), the live service's log (``live``) or both.

    A ``(request_id, imp_id)`` logged in both keeps the live service's record.
    """
    frames = []
    if source in ("all", "events"):
        frames.append(read_table(workspace.events, "decisions", start=start, end=end))
    if source in ("all", "live"):
        frames.append(read_table(workspace.decisions, "decisions", start=start, end=end))
    if not frames:
        raise ReportError(f"unknown decision source {source!r}: all, events or live")
    frames = [f for f in frames if len(f)]
    if not frames:
        return SCHEMAS["decisions"].empty_table().to_pandas()
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return out.drop_duplicates(KEY, keep="last").reset_index(drop=True)


@dataclass(frozen=True)
class CampaignInfo:
    campaign_id: str
    goal: str                 # "cpc" | "cpa"
    cpc: float | None
    cpa: float | None
    daily_budget: float
    status: str
    advertiser: str = ""

    @property
    def value_per_outcome(self) -> float:
        price = self.cpc if self.goal == "cpc" else self.cpa
        return math.nan if price is None else float(price)


def _campaign(doc: Any, path: Path, i: int) -> CampaignInfo:
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: campaigns[{i}] is not an object")
    try:
        cid = str(doc["campaign_id"])
        goal = str(doc.get("goal", "cpc"))
        cpc, cpa = doc.get("cpc"), doc.get("cpa")
        info = CampaignInfo(
            campaign_id=cid, goal=goal, cpc=None if cpc is None else float(cpc),
            cpa=None if cpa is None else float(cpa),
            daily_budget=float(doc.get("daily_budget") or 0.0),
            status=str(doc.get("status", "active")), advertiser=str(doc.get("advertiser", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{path}: campaigns[{i}]: {exc!r}") from exc
    if goal not in ("cpc", "cpa"):
        raise ReportError(f"{path}: campaign {cid}: goal must be cpc or cpa, got {goal!r}")
    return info


def load_campaigns(path: Path) -> dict[str, CampaignInfo]:
    """``campaigns.json`` (``{"campaigns": [{"campaign_id", "goal", "cpc", "cpa",
    "daily_budget", ...}]}``) as ``campaign_id -> CampaignInfo``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{path}: no campaigns file; run `adplatform simulate` or write "
                          "world/campaigns.json") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: cannot read campaigns: {exc}") from exc
    items = doc.get("campaigns") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ReportError(f"{path}: expected an object with a 'campaigns' list")
    campaigns = [_campaign(c, path, i) for i, c in enumerate(items)]
    return {c.campaign_id: c for c in campaigns}


def _keys(frame: pd.DataFrame) -> pd.Series:
    return frame["request_id"].astype(str) + "\x1f" + frame["imp_id"].astype(str)


class _Aligned:
    """A table's rows aligned to the decisions by ``(request_id, imp_id)``."""

    def __init__(self, index: pd.Index, frame: pd.DataFrame) -> None:
        self.n = len(index)
        self.frame = frame
        pos = (np.asarray(index.get_indexer(_keys(frame)), dtype=np.int64) if len(frame)
               else np.zeros(0, dtype=np.int64))
        self.ok = pos >= 0
        self.pos = pos[self.ok]

    def flag(self) -> np.ndarray:
        out = np.zeros(self.n)
        out[self.pos] = 1.0
        return out

    def take(self, column: str) -> np.ndarray:
        """``frame[column]`` per decision (None where absent; the last row wins on repeats)."""
        out = np.full(self.n, None, dtype=object)
        out[self.pos] = self.frame[column].to_numpy(dtype=object)[self.ok]
        return out

    def take_time(self, column: str) -> pd.Series:
        """A timestamp column per decision (NaT where absent), UTC."""
        ns = pd.DatetimeIndex(self.frame[column]).as_unit("ns").asi8 if len(self.frame) \
            else np.zeros(0, dtype=np.int64)
        out = np.full(self.n, np.iinfo(np.int64).min, dtype=np.int64)   # NaT
        out[self.pos] = ns[self.ok]
        return pd.Series(pd.to_datetime(out, utc=True))

    def total(self, column: str) -> np.ndarray:
        w = np.nan_to_num(self.frame[column].to_numpy(dtype=np.float64)[self.ok])
        return np.bincount(self.pos, weights=w, minlength=self.n)


def decision_outcomes(decisions: pd.DataFrame, outcomes: Outcomes,
                      campaigns: dict[str, CampaignInfo] | None = None) -> pd.DataFrame:
    """One row per decision with its outcomes (see the module docstring).

    Columns: the decision's ``ts, request_id, imp_id, variant, policy, model_version,
    campaign_id, pctr, reason``; from the request ``request_ts, user_id, device_id,
    publisher_id`` (NaT / None when the request is not in the log); 0/1 ``request, bid, won, impression,
    clicked, converted``; ``cost`` (USD), ``bid_price`` (CPM, NaN on no-bid), ``value``
    and ``surplus`` (NaN without campaigns).
    """
    missing = [c for c in (*KEY, "ts", "bid") if c not in decisions.columns]
    if missing:
        raise ReportError(f"decisions: missing columns {missing}")
    keys = _keys(decisions)
    last = ~keys.duplicated(keep="last").to_numpy()
    d = decisions.loc[last].reset_index(drop=True)
    index = pd.Index(keys[last])
    cols = [c for c in ("ts", *KEY, "variant", "policy", "model_version", "campaign_id",
                        "pctr", "reason") if c in d.columns]
    out = d[cols].copy()
    req = _Aligned(index, outcomes.requests)
    for c in ("user_id", "device_id", "publisher_id"):
        out[c] = req.take(c) if c in outcomes.requests else None
    # The exchange's clock, where the request is logged (see ``event_time``).
    out["request_ts"] = req.take_time("ts") if "ts" in outcomes.requests else pd.NaT
    out["request"] = 1.0
    bid = d["bid"].fillna(False).to_numpy(dtype=bool)
    out["bid"] = bid.astype(np.float64)
    price = d["price"].to_numpy(dtype=np.float64) if "price" in d else np.full(len(d), np.nan)
    out["bid_price"] = np.where(bid, price, np.nan)
    imp = _Aligned(index, outcomes.impressions)
    impression = imp.flag()
    out["impression"] = impression
    out["cost"] = imp.total("cost")
    auctions = outcomes.auctions
    won = auctions.loc[auctions["won"].fillna(False).to_numpy(dtype=bool)]
    out["won"] = np.maximum(_Aligned(index, won).flag(), impression)
    out["clicked"] = _Aligned(index, outcomes.clicks).flag() * impression
    out["converted"] = _Aligned(index, outcomes.conversions).flag() * impression
    camp = imp.take("campaign_id")
    if "campaign_id" in out:
        decided = out["campaign_id"].to_numpy(dtype=object)
        camp = np.where(pd.isna(camp), decided, camp)
    blank = pd.isna(camp) | (camp == "")
    out["campaign_id"] = pd.Series(camp, dtype=object).where(~blank, None).to_numpy()
    pub = out["publisher_id"].to_numpy(dtype=object)
    out["publisher_id"] = np.where(pd.isna(pub), imp.take("publisher_id"), pub)
    if campaigns is None:
        out["value"] = np.nan
    else:
        per = {cid: c.value_per_outcome for cid, c in campaigns.items()}
        cpa_ids = {cid for cid, c in campaigns.items() if c.goal == "cpa"}
        price_of = out["campaign_id"].map(per).to_numpy(dtype=np.float64)
        cpa = out["campaign_id"].isin(cpa_ids).to_numpy()
        outcome = np.where(cpa, out["converted"].to_numpy(), out["clicked"].to_numpy())
        # No impression, no value: an unknown campaign only matters where it was shown.
        out["value"] = np.where(impression > 0, price_of * outcome, 0.0)
    out["surplus"] = out["value"] - out["cost"]
    return out


def event_time(joined: pd.DataFrame) -> pd.Series:
    """The request's time where the request is logged, else the decision's.

    In production the two clocks agree. In a simulation they need not: the live service
    logs decisions with the wall clock while the exchange runs a simulated one, and the
    request time is the one that lines up with the batch history and the features.
    """
    return joined["request_ts"].where(joined["request_ts"].notna(), joined["ts"])


def unit_ids(frame: pd.DataFrame, unit: Unit) -> pd.Series:
    """The randomisation unit of each row, as :class:`decisioning.experiments.Experiment`
    assigns it: the user id, or the request when there is none (``unit="user"``); always
    the request (``unit="request"``)."""
    req = "r:" + frame["request_id"].astype(str)
    if unit == "request":
        return req
    if unit != "user":
        raise ReportError(f"unit must be 'user' or 'request', got {unit!r}")
    user = frame["user_id"]
    has_user = (user.notna() & (user != "")).to_numpy()
    return ("u:" + user.astype(str)).where(has_user, req)


__all__ = ["KEY", "OUTCOME_COLUMNS", "CampaignInfo", "DecisionSource", "Outcomes", "Unit", "decision_outcomes",
           "event_time", "load_campaigns", "load_decisions", "read_table", "unit_ids"]
