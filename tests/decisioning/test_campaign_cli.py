"""``adplatform campaign ...`` on the file store, and the repository it edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from adplatform.config import Settings
from decisioning import CampaignError, FileCampaignStore, load_campaigns
from decisioning.campaign_cli import parse_creative, register
from decisioning.campaign_repo import FileCampaignRepository

from .conftest import campaign_doc


@pytest.fixture
def cli(tmp_path: Path) -> tuple[typer.Typer, Settings]:
    settings = Settings(home=tmp_path / "ws")  # type: ignore[call-arg]
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """test root"""

    register(app, settings=lambda: settings, console=Console(width=200, force_terminal=False))
    return app, settings


def _run(cli: tuple[typer.Typer, Settings], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli[0], list(args))
    return result.exit_code, result.output


def test_create_list_update_pause_resume(cli: tuple[typer.Typer, Settings]) -> None:
    code, out = _run(cli, "campaign", "create", "--id", "c42", "--adomain", "shoes.example",
                     "--goal", "cpc", "--cpc", "0.8", "--daily-budget", "250",
                     "--frequency-cap", "3", "--country", "USA",
                     "--creative", "cr42a:banner:300x250", "--creative", "cr42v:video:640x480:2")
    assert code == 0, out
    assert "created campaign c42 (2 creatives)" in out
    path = cli[1].workspace.world / "campaigns.json"
    (c,) = load_campaigns(path).campaigns
    assert (c.cpc, c.daily_budget, c.frequency_cap) == (0.8, 250.0, 3)
    assert c.targeting.countries == ["USA"] and c.creatives[1].topic == 2
    code, out = _run(cli, "campaign", "update", "c42", "--cpc", "0.9", "--unlimited-budget",
                     "--domain", "news.example")
    assert code == 0 and "updated campaign c42" in out, out
    c = load_campaigns(path).campaigns[0]
    assert c.cpc == 0.9 and c.daily_budget is None
    assert c.targeting.domains == ["news.example"] and c.targeting.countries == ["USA"]
    assert _run(cli, "campaign", "pause", "c42") == (0, "campaign c42 is paused\n")
    store = FileCampaignStore(path)
    assert len(store) == 1 and store.campaigns[0].status == "paused"
    assert load_campaigns(path).campaigns[0].status == "paused"
    assert _run(cli, "campaign", "resume", "c42")[0] == 0
    code, out = _run(cli, "campaign", "list")
    assert code == 0 and "c42" in out and "active" in out and "0.9" in out


@pytest.mark.parametrize(("args", "words"), [
    (["--id", "x", "--adomain", "a.example", "--goal", "cpm", "--creative", "k:banner:1x1"],
     "goal: Input should be 'cpc' or 'cpa'"),
    (["--id", "x", "--adomain", "a.example", "--goal", "cpc", "--creative", "k:banner:1x1"],
     "goal 'cpc' needs a cpc > 0"),
    (["--id", "x", "--adomain", "a.example", "--goal", "cpc", "--cpc", "-2",
      "--creative", "k:banner:1x1"], "cpc: Input should be greater than 0"),
    (["--id", "x", "--goal", "cpc", "--cpc", "1", "--creative", "k:banner:1x1"],
     "adomain: List should have at least 1 item"),
    (["--id", "x", "--adomain", "a.example", "--goal", "cpc", "--cpc", "1"],
     "creatives: List should have at least 1 item"),
    (["--id", "x", "--adomain", "a.example", "--goal", "cpc", "--cpc", "1",
      "--creative", "k:banner"], "creatives[0]: Value error, a banner creative needs w and h"),
    (["--id", "x", "--adomain", "a.example", "--goal", "cpc", "--cpc", "1",
      "--creative", "k:popup:1x1"], "format must be one of banner"),
    (["--id", "x", "--adomain", "a.example", "--goal", "cpc", "--cpc", "1",
      "--daily-budget", "-5", "--creative", "k:banner:1x1"],
     "daily_budget: Input should be greater than or equal to 0"),
    (["--id", "x", "--adomain", "a.example", "--goal", "cpc", "--cpc", "1",
      "--frequency-cap", "0", "--creative", "k:banner:1x1"], "frequency_cap"),
    (["--id", "", "--adomain", "a.example", "--goal", "cpc", "--cpc", "1",
      "--creative", "k:banner:1x1"], "campaign_id: String should have at least 1 character"),
])
def test_create_validates_every_field(cli: tuple[typer.Typer, Settings], args: list[str],
                                      words: str) -> None:
    code, out = _run(cli, "campaign", "create", *args)
    assert code == 2 and "error:" in out and words in " ".join(out.split()), out
    assert not (cli[1].workspace.world / "campaigns.json").exists()


def test_update_errors(cli: tuple[typer.Typer, Settings]) -> None:
    path = cli[1].workspace.world / "campaigns.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(campaign_doc()))
    assert "no campaign 'nope'" in _run(cli, "campaign", "pause", "nope")[1]
    code, out = _run(cli, "campaign", "update", "c01", "--goal", "cpa")
    assert code == 2 and "goal 'cpa' needs a cpa > 0" in out
    code, out = _run(cli, "campaign", "update", "c01")
    assert code == 2 and "nothing to change" in out
    code, out = _run(cli, "campaign", "update", "c02", "--creative", "cr01a:banner:300x250")
    assert code == 2 and "duplicate creative_id 'cr01a'" in out
    code, out = _run(cli, "campaign", "create", "--from-json", str(path))
    assert code == 2 and "invalid campaign" in out
    one = path.parent / "one.json"
    one.write_text(json.dumps({**campaign_doc()["campaigns"][0], "campaign_id": "c01"}))
    code, out = _run(cli, "campaign", "create", "--from-json", str(one))
    assert code == 2 and "campaign 'c01' exists" in out
    assert load_campaigns(path) == load_campaigns(path)        # untouched, still valid


def test_parse_creative() -> None:
    assert parse_creative("a:video:640x480:3") == {"creative_id": "a", "format": "video",
                                                   "w": 640, "h": 480, "topic": 3}
    assert parse_creative("n:native") == {"creative_id": "n", "format": "native"}
    for bad in ("a", ":banner", "a:banner:wide", "a:banner:1x1:t", "a:banner:1x1:2:x"):
        with pytest.raises(CampaignError):
            parse_creative(bad)


def test_file_repository_writes_atomically(tmp_path: Path) -> None:
    repo = FileCampaignRepository(tmp_path / "c.json")
    assert repo.list() == []
    from decisioning import Campaign

    c = Campaign.model_validate(campaign_doc()["campaigns"][0])
    repo.create(c)
    assert repo.get("c01") == c and [p.name for p in tmp_path.iterdir()] == ["c.json"]
    with pytest.raises(CampaignError, match="campaign_id cannot change"):
        repo.update("c01", {"campaign_id": "c02"})


def test_a_watched_store_sees_cli_edits(cli: tuple[typer.Typer, Settings]) -> None:
    import os
    import time

    path = cli[1].workspace.world / "campaigns.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(campaign_doc()))
    os.utime(path, ns=(1, 1))                           # an old mtime: any write moves it
    store = FileCampaignStore(path)
    store.watch(0.02)
    assert _run(cli, "campaign", "pause", "c01")[0] == 0
    deadline = time.monotonic() + 10
    while next(c for c in store.campaigns if c.campaign_id == "c01").status != "paused":
        assert time.monotonic() < deadline, "the watcher did not reload"
        time.sleep(0.02)
    store.close()
