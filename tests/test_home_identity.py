"""A home's identity (data/home.json) with the paper broker: what a start records and refuses, and
the `home` / `positions` commands. The Alpaca cases (copies, claims, foreign holdings) are in
tests/test_live_alpaca.py."""

from __future__ import annotations

import json
import shutil

import pytest

import constants as C
import home_identity as hi
import live_state
import trading_api as ta
from error_handling import ConfigurationError
from tests.helpers import run

SYMBOLS = ("AAPL", "MSFT")


def paper(home: C.Paths) -> ta.SimulatedBroker:
    return ta.SimulatedBroker(home.paper_broker_file)


def recorded(home: C.Paths) -> hi.HomeIdentity:
    broker = paper(home)
    identity, new = hi.establish(home, broker, SYMBOLS, None)
    assert new
    broker.persist()
    hi.write_identity(home, identity)
    return identity


def test_a_first_start_records_the_venue_account_path_and_tag(tmp_path):
    home = C.paths(tmp_path / "home").ensure()
    identity = recorded(home)
    assert (identity.venue, identity.path, identity.order_tag) == (
        "simulated",
        str(home.home),
        home.order_tag(),
    )
    assert identity.account_id == paper(home).account().account_id
    again, new = hi.establish(home, paper(home), SYMBOLS, None)
    assert again == identity and not new


def test_a_copied_paper_home_is_re_recorded_where_it_is(tmp_path):
    """Its account (data/paper_broker.json) moved with it: a second paper account, no clash."""
    home = C.paths(tmp_path / "home").ensure()
    identity = recorded(home)
    copy = C.paths(tmp_path / "copy")
    shutil.copytree(home.home, copy.home)

    moved, new = hi.establish(copy, paper(copy), SYMBOLS, None)

    assert new and moved.path == str(copy.home) and moved.account_id == identity.account_id


def test_a_home_that_traded_another_broker_before_home_json_is_refused(tmp_path):
    home = C.paths(tmp_path / "home").ensure()
    saved = live_state.PositionsState("paper", "alpaca", "2022-12-29T15:00:00+00:00", 1.0, 1.0, {})
    with pytest.raises(ConfigurationError, match=r"traded the alpaca broker.*--broker alpaca"):
        hi.establish(home, paper(home), SYMBOLS, saved)
    assert not home.home_identity_file.exists()


def test_an_unreadable_home_file_is_a_clear_error(tmp_path):
    home = C.paths(tmp_path / "home").ensure()
    home.home_identity_file.write_text("{not json")
    with pytest.raises(ConfigurationError, match=r"home\.json is unreadable.*home claim"):
        hi.establish(home, paper(home), SYMBOLS, None)


def test_home_show_before_and_after_the_first_record(tmp_path):
    home = C.paths(tmp_path / "home").ensure()
    before = run("main.py", "home", home=home.home)
    assert before.returncode == 0 and "has not traded yet" in before.stdout
    adopt = run("main.py", "positions", "adopt", home=home.home)  # no paper account to read
    assert adopt.returncode == 2 and "has no paper account yet" in adopt.stderr
    assert not home.paper_broker_file.exists() and not home.home_identity_file.exists()
    identity = recorded(home)
    after = run("main.py", "home", home=home.home)
    assert after.returncode == 0, after.stderr
    assert f"simulated account {identity.account_id}" in after.stdout


def test_a_claim_while_the_loop_runs_is_refused_and_changes_nothing(tmp_path):
    import filelock

    home = C.paths(tmp_path / "home").ensure()
    recorded(home)
    tag, file = home.order_tag(), home.home_identity_file.read_text()
    with filelock.FileLock(str(home.live_lock_file), timeout=0):
        refused = run("main.py", "home", "claim", home=home.home)
    assert refused.returncode == 2 and "is running on" in refused.stderr
    assert home.order_tag() == tag and home.home_identity_file.read_text() == file

    claimed = run("main.py", "home", "claim", home=home.home)
    assert claimed.returncode == 0, claimed.stderr
    assert home.order_tag() != tag
    assert json.loads(home.home_identity_file.read_text())["order_tag"] == home.order_tag()
