"""Lookalike quality on the simulator: does a lookalike of a latent interest group find it?

The simulator gives every human user a latent interest group that only its ``truth``
table reveals. Here — and nowhere else in the audience code — that truth is read, to
pick a seed (a random fraction of one group's indexed users) and to score the lookalike
built from it: precision@N (the share of the N users found who belong to the group)
against the group's share of all indexed users. A ratio of 1 is random targeting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from adplatform.config import Settings
from adplatform.eventlog import read_events
from adplatform.workspace import Workspace
from features.audience.errors import AudienceError
from features.audience.index import AudienceIndex
from features.audience.lookalike import lookalike


def user_groups(workspace: Workspace) -> pd.Series:
    """user_id → latent interest group (simulator truth, EVALUATION ONLY; bots are -1).

    Each user id's most frequent group over its requests (a human's id has one group).
    """
    req = read_events(workspace.events, "requests")[["request_id", "imp_id", "user_id"]]
    truth = read_events(workspace.truth, "truth")[["request_id", "imp_id", "user_group"]]
    if truth.empty:
        raise AudienceError(f"no simulator truth under {workspace.truth}: "
                            "lookalike quality needs a simulated workspace")
    df = req[req["user_id"] != ""].merge(truth, on=["request_id", "imp_id"], how="inner")
    counts = df.groupby(["user_id", "user_group"]).size().rename("n").reset_index()
    best = counts.sort_values(["user_id", "n", "user_group"], ascending=[True, False, True])
    best = best.drop_duplicates("user_id")
    return pd.Series(best["user_group"].to_numpy(dtype=np.int64),
                     index=best["user_id"].to_numpy(dtype=object), name="user_group")


@dataclass(frozen=True)
class LookalikeQuality:
    group: int
    seeds: int             # seed users (a fraction of the group's indexed users)
    size: int              # N: users in the lookalike
    members: int           # the group's indexed users
    population: int        # all indexed users
    hits: int              # lookalike users in the group

    @property
    def share(self) -> float:
        return self.members / self.population if self.population else 0.0

    @property
    def precision(self) -> float:
        return self.hits / self.size if self.size else 0.0

    @property
    def ratio(self) -> float:
        """precision@N over the group's share: the lift over random targeting."""
        return self.precision / self.share if self.share else 0.0


def evaluate_lookalike(settings: Settings, group: int, size: int, *,
                       seed_fraction: float = 0.1, rng_seed: int = 0,
                       groups: pd.Series | None = None,
                       uri: str | None = None) -> LookalikeQuality:
    """Seed with a random ``seed_fraction`` of ``group``'s indexed users; score the lookalike."""
    if not 0.0 < seed_fraction < 1.0:
        raise AudienceError(f"seed_fraction must be in (0, 1), got {seed_fraction}")
    groups = user_groups(settings.workspace) if groups is None else groups
    candidates = sorted(groups.index[groups.to_numpy() == group])
    with AudienceIndex.open(settings, uri) as index:
        population = index.count()
        members = sorted(index.vectors(candidates))
    if not members:
        raise AudienceError(f"group {group} has no indexed users")
    rng = np.random.default_rng([rng_seed, group])
    n_seeds = max(1, round(seed_fraction * len(members)))
    seeds = [members[i] for i in sorted(rng.choice(len(members), n_seeds, replace=False))]
    segment = lookalike(settings, seeds, size, f"eval-group-{group}", uri=uri, save=False)
    member_set = set(members)
    hits = sum(u in member_set for u in segment.user_ids)
    return LookalikeQuality(group=group, seeds=len(seeds), size=len(segment),
                            members=len(members), population=population, hits=hits)


__all__ = ["LookalikeQuality", "evaluate_lookalike", "user_groups"]
