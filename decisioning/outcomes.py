"""Outcomes: the decision log joined with the notices, for reports.

One row per decision (``request_id, imp_id``) with what the exchange told us:

============  ===============================================================
won           a win or a billing notice arrived
billed        a billing notice arrived (the impression is paid for)
lost          a loss notice arrived
cost_micros   paid for the impression, micro-dollars (0 unless billed)
paid_price    the billing (else win) price, CPM as sent
loss_code     OpenRTB loss reason code, when reported
min_to_win    the exchange's minimum bid to win, when reported
============  ===============================================================

Notices for bids the log does not hold (another process's log, a lost buffer) are
kept out of the join and counted by :func:`orphan_notices`.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds

from decisioning.notices import NOTICE_SCHEMA

_KEY = ["request_id", "imp_id"]


def read_notices(root: Path, *, start: date | None = None,
                 end: date | None = None) -> pd.DataFrame:
    """``<root>/notices`` as a DataFrame (empty with the schema's columns if none)."""
    base = Path(root) / "notices"
    files = sorted(base.glob("date=*/*.parquet")) if base.exists() else []
    if start is not None or end is not None:
        def keep(p: Path) -> bool:
            d = date.fromisoformat(p.parent.name.removeprefix("date="))
            return (start is None or d >= start) and (end is None or d <= end)
        files = [f for f in files if keep(f)]
    if not files:
        return NOTICE_SCHEMA.empty_table().to_pandas()
    return ds.dataset([str(f) for f in files], schema=NOTICE_SCHEMA,
                      format="parquet").to_table().to_pandas()


def _per_decision(notices: pd.DataFrame) -> pd.DataFrame:
    n = notices.drop_duplicates(["kind", "request_id", "imp_id", "bid_id"])
    flags = pd.crosstab([n["request_id"], n["imp_id"]], n["kind"]).reindex(
        columns=["win", "billing", "loss"], fill_value=0) > 0
    bill = n[n["kind"] == "billing"].groupby(_KEY).agg(
        cost_micros=("cost_micros", "sum"), bill_price=("price", "max"))
    win = n[n["kind"] == "win"].groupby(_KEY).agg(win_price=("price", "max"))
    loss = n[n["kind"] == "loss"].groupby(_KEY).agg(
        loss_code=("loss_code", "max"), min_to_win=("min_to_win", "max"))
    out = flags.join([bill, win, loss], how="left")
    out["won"] = out["win"] | out["billing"]
    out["paid_price"] = out["bill_price"].fillna(out["win_price"])
    return out.rename(columns={"billing": "billed", "loss": "lost"})[
        ["won", "billed", "lost", "cost_micros", "paid_price", "loss_code", "min_to_win"]]


def join_outcomes(decisions: pd.DataFrame, notices: pd.DataFrame) -> pd.DataFrame:
    """Every decision with its outcome columns (see the module docstring)."""
    out = decisions.merge(_per_decision(notices).reset_index(), on=_KEY, how="left")
    for col in ("won", "billed", "lost"):
        out[col] = out[col].astype("boolean").fillna(False).astype(bool)
    out["cost_micros"] = out["cost_micros"].fillna(0).astype("int64")
    out["loss_code"] = out["loss_code"].astype("Int32")
    return out


def orphan_notices(decisions: pd.DataFrame, notices: pd.DataFrame) -> int:
    """Notices whose (request, imp) has no decision record."""
    if notices.empty:
        return 0
    known = pd.MultiIndex.from_frame(decisions[_KEY])
    return int((~pd.MultiIndex.from_frame(notices[_KEY]).isin(known)).sum())


def summary_by_variant(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per variant: decisions, bids, wins, billed impressions, spend (exact µ$), win rate."""
    g = outcomes.groupby("variant")
    out = pd.DataFrame({"decisions": g.size(), "bids": g["bid"].sum(),
                        "wins": g["won"].sum(), "billed": g["billed"].sum(),
                        "spend_micros": g["cost_micros"].sum()})
    out["win_rate"] = (out["wins"] / out["bids"].where(out["bids"] > 0)).fillna(0.0)
    return out


__all__ = ["join_outcomes", "orphan_notices", "read_notices", "summary_by_variant"]
