"""Where a run writes: everything lives under ``$ADPLATFORM_HOME`` (default ``./workspace``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def events(self) -> Path:
        """Event log: ``events/<table>/date=YYYY-MM-DD/part-*.parquet``."""
        return self.root / "events"

    @property
    def truth(self) -> Path:
        """Simulator ground truth, kept apart from the event log (evaluation only)."""
        return self.root / "truth"

    @property
    def world(self) -> Path:
        """The simulator's world description (campaigns, publishers) as JSON."""
        return self.root / "world"

    @property
    def feature_repo(self) -> Path:
        """Feast data written by runs: registry, online store, offline parquet."""
        return self.root / "feast"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlflow" / "artifacts"

    @property
    def decisions(self) -> Path:
        """Decision log written by the running decision service."""
        return self.root / "decision_log"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def models(self) -> Path:
        """Local cache of model files resolved from the registry."""
        return self.root / "models"

    def ensure(self) -> Workspace:
        for p in (self.events, self.truth, self.world, self.feature_repo, self.mlflow_db.parent,
                  self.mlflow_artifacts, self.decisions, self.reports, self.models):
            p.mkdir(parents=True, exist_ok=True)
        return self
