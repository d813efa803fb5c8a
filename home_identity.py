"""Which account a trading home trades, and whether it is still the home that first traded it.

`data/home.json` (`HomeIdentity`) is written at a home's first `main.py live` start: the venue
(simulated | alpaca), the broker's account id, the home's path, a random home id and its order
tag, and the holdings in the pair's symbols the account already had (`unowned`: not this home's
until `main.py positions adopt`).

Invariants (checked at every start, before anything is written):
- A home trades one venue and one account: another is refused, naming both and how to start a
  new home (running two brokers in one home made each wipe the other's positions).
- Client order ids are unique to a home only while no two homes share a tag. A home on a remote
  account (Alpaca) that finds itself at another path, or with another tag, than it recorded is a
  copy or a move: it refuses to trade until `main.py home claim` gives it a new tag and records
  it as the account's home. A paper home carries its account in its own folder, so a copy is a
  second account: it is re-recorded where it is.
- Shares the account held before the first start are held apart: the loop trades only the
  difference it made (`PairVenue`, `reconcile`, positions.json net of `unowned`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import alert_dispatch
from atomic_io import atomic_write_json, atomic_write_text
from audit_logging import AuditLog
from error_handling import ConfigurationError
from quantities import Qty, as_qty

if TYPE_CHECKING:
    import constants as C
    from live_state import PositionsState
    from trading_api import Broker

log = logging.getLogger(__name__)

IDENTITY_VERSION = 1
#: Venues whose account lives in the home's own folder: a copy of the home is a copy of it.
LOCAL_VENUES = frozenset({"simulated"})


@dataclass(frozen=True)
class HomeIdentity:
    """data/home.json: the account a home trades and where the home was when it said so."""

    venue: str  # the broker's name: simulated | alpaca
    account_id: str  # the broker's account id (Alpaca's UUID; the paper account's sim-...)
    path: str  # the home's resolved path when recorded
    home_id: str  # random, new at the first start and at each claim
    order_tag: str  # data/order_tag when recorded
    recorded_at: str  # ISO time (UTC)
    #: Signed shares per pair symbol the account held that this home did not buy: never traded,
    #: kept out of its positions, until adopted.
    unowned: Mapping[str, Qty] = field(default_factory=dict)
    version: int = IDENTITY_VERSION

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "unowned": dict(self.unowned)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HomeIdentity:
        return cls(
            venue=str(data["venue"]),
            account_id=str(data["account_id"]),
            path=str(data["path"]),
            home_id=str(data["home_id"]),
            order_tag=str(data["order_tag"]),
            recorded_at=str(data["recorded_at"]),
            unowned={str(s): as_qty(q) for s, q in (data.get("unowned") or {}).items()},
            version=int(data["version"]),
        )

    def describe(self) -> str:
        """`simulated account sim-1a2b (recorded 2026-12-06 at /srv/home)` for messages."""
        when = self.recorded_at[:10]
        return f"{self.venue} account {self.account_id} (recorded {when} at {self.path})"


def read_identity(home: C.Paths) -> HomeIdentity | None:
    """data/home.json, or None before the first start; ConfigurationError when unreadable."""
    path = home.home_identity_file
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != IDENTITY_VERSION:
            raise ValueError(f"not a version-{IDENTITY_VERSION} home identity")
        return HomeIdentity.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigurationError(
            f"{path} is unreadable ({exc}); it records which broker account this home trades: "
            "restore it from a backup, or run `python main.py home claim --broker ...`"
        ) from None


def write_identity(home: C.Paths, identity: HomeIdentity) -> None:
    atomic_write_json(home.home_identity_file, identity.to_json())


def pair_holdings(broker: Broker, symbols: tuple[str, ...]) -> dict[str, Qty]:
    """Signed shares the broker holds in `symbols` (none at 0)."""
    return {s: q for s, q in broker.holdings().items() if s in symbols and q}


def _new(home: C.Paths, venue: str, account_id: str, unowned: Mapping[str, Qty]) -> HomeIdentity:
    return HomeIdentity(
        venue=venue,
        account_id=account_id,
        path=str(home.home),
        home_id=uuid.uuid4().hex,
        order_tag=home.order_tag(),
        recorded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        unowned={s: q for s, q in unowned.items() if q},
    )


def _new_home_hint(venue: str) -> str:
    flag = "" if venue in LOCAL_VENUES else f" --broker {venue}"
    return f"TRADING_HOME=/path/to/new-home python main.py live{flag}"


def check_venue(recorded: HomeIdentity, venue: str, account_id: str) -> None:
    """ConfigurationError when `venue`/`account_id` is not the account the home recorded."""
    if (recorded.venue, recorded.account_id) == (venue, account_id):
        return
    raise ConfigurationError(
        f"this home trades the {recorded.describe()}; this start reaches {venue} account "
        f"{account_id}: a home belongs to one venue and account (two would overwrite each "
        f"other's positions). Start a new home for it: {_new_home_hint(venue)} "
        f"(this one needs --broker {recorded.venue})"
    )


def establish(
    home: C.Paths, broker: Broker, symbols: tuple[str, ...], saved: PositionsState | None
) -> tuple[HomeIdentity, bool]:
    """The identity this start trades under and whether it is new (to record); refused
    (ConfigurationError) on another venue or account, or a copied or moved home on a remote
    account. Broker calls: the account and, at a first start, the holdings."""
    venue, account_id = broker.name, broker.account().account_id
    recorded = read_identity(home)
    if recorded is None:
        if saved is not None and saved.broker != venue:  # a home traded before home.json
            raise ConfigurationError(
                f"this home traded the {saved.broker} broker (positions.json); this start "
                f"reaches {venue} account {account_id}: a home belongs to one venue and account. "
                f"Start a new home for it: {_new_home_hint(venue)} (this one needs --broker "
                f"{saved.broker})"
            )
        # A home that traded before home.json existed owns what it holds; a new one owns nothing.
        unowned = {} if saved is not None else pair_holdings(broker, symbols)
        return _new(home, venue, account_id, unowned), True
    check_venue(recorded, venue, account_id)
    here, tag = str(home.home), home.order_tag()
    if (recorded.path, recorded.order_tag) == (here, tag):
        return recorded, False
    if venue in LOCAL_VENUES:  # its account moved with it: a second paper account, no clash
        log.info("home moved or copied from %s: re-recorded at %s", recorded.path, here)
        return dataclasses.replace(recorded, path=here, order_tag=tag), True
    what = f"at {here}" if recorded.path != here else f"with order tag {tag}"
    raise ConfigurationError(
        f"this home recorded {venue} account {account_id} at {recorded.path} with order tag "
        f"{recorded.order_tag}, and is now {what}: a copy or a move. Two homes on one account "
        "must never send the same client order ids, so it does not trade until you say which "
        f"home owns the account: run `python main.py home claim --broker {venue}` here if this "
        f"one does (it takes a new order tag), or start a new home: {_new_home_hint(venue)}"
    )


def report_unowned(
    home: C.Paths, audit: AuditLog, identity: HomeIdentity, first: bool, symbols: tuple[str, ...]
) -> None:
    """At the first start a `home_recorded` audit record; whenever the account holds pair
    shares this home does not own, a log line, and at the first start a WARNING alert."""
    if first:
        audit.append(
            "home_recorded", {**_audit_payload(identity), "unowned": dict(identity.unowned)}
        )
    if not identity.unowned:
        return
    text = ", ".join(f"{s} {q:+,}" for s, q in identity.unowned.items())
    message = (
        f"{identity.venue} account {identity.account_id} held {text} in {'/'.join(symbols)} "
        "before this home's first start: not this home's, never traded by it, until you run "
        f"`python main.py positions adopt --broker {identity.venue}`"
    )
    log.warning("%s", message)
    if first:
        alert_dispatch.send(
            "WARNING",
            "home_identity",
            "Holdings not adopted",
            message,
            {"unowned": dict(identity.unowned)},
            home=home.home,
        )


def unowned_lines(identity: HomeIdentity) -> list[str]:
    """The shares held apart, for `main.py home`: one line, or none."""
    if not identity.unowned:
        return []
    text = ", ".join(f"{s} {q:+,}" for s, q in identity.unowned.items())
    return [f"held apart (not this home's until `positions adopt`): {text}"]


def _audit_payload(identity: HomeIdentity) -> dict[str, Any]:
    return {
        "venue": identity.venue,
        "account_id": identity.account_id,
        "path": identity.path,
        "home_id": identity.home_id,
        "order_tag": identity.order_tag,
    }


@contextmanager
def _loop_stopped(home: C.Paths) -> Iterator[None]:
    """Hold the live loop's lock: an identity changes only while no loop trades the home."""
    import filelock

    home.data_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(home.live_lock_file), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise ConfigurationError(
            f"`python main.py live` is running on {home.home}: stop it first"
        ) from None
    try:
        yield
    finally:
        lock.release()


def claim(
    home: C.Paths, broker: Broker, symbols: tuple[str, ...], saved: PositionsState | None
) -> HomeIdentity:
    """Make this home the one that trades `broker`'s account from here: a new order tag (a copy
    no longer shares ids with its original), a new home id, this path. What positions.json says
    the home holds stays its own; anything else in the pair's symbols is held apart until
    adopted. Audited (`home_claimed`)."""
    with _loop_stopped(home):
        account_id = broker.account().account_id
        held = pair_holdings(broker, symbols)
        mine = {s: p.qty for s, p in saved.positions.items()} if saved is not None else {}
        unowned = {s: held.get(s, 0) - mine.get(s, 0) for s in set(held) | set(mine)}
        atomic_write_text(home.order_tag_file, os.urandom(3).hex() + "\n")
        identity = _new(home, broker.name, account_id, unowned)
        previous = read_identity_quietly(home)
        broker.persist()  # the paper account's id is on disk before the home names it
        write_identity(home, identity)
        AuditLog(home.audit_log).append(
            "home_claimed",
            {
                **_audit_payload(identity),
                "unowned": dict(identity.unowned),
                "previous": _audit_payload(previous) if previous else None,
            },
        )
    return identity


def read_identity_quietly(home: C.Paths) -> HomeIdentity | None:
    """The recorded identity, or None when absent or unreadable (a claim replaces it)."""
    try:
        return read_identity(home)
    except ConfigurationError:
        return None


def adopt(
    home: C.Paths, broker: Broker, symbols: tuple[str, ...], saved: PositionsState | None
) -> dict[str, Qty]:
    """Make the pair shares held apart this home's own (they are traded from the next start);
    returns them. A home not yet started is recorded now, owning what the account holds.
    Audited (`positions_adopted`: the journal that explains the change at the next start)."""
    with _loop_stopped(home):
        identity, new = establish(home, broker, symbols, saved)
        adopted = dict(identity.unowned)
        broker.persist()  # the paper account's id is on disk before a home names it
        write_identity(home, dataclasses.replace(identity, unowned={}))
        if adopted or new:
            AuditLog(home.audit_log).append(
                "positions_adopted", {**_audit_payload(identity), "positions": adopted}
            )
    return adopted
