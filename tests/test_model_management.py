"""model_management.py: registry, integrity and compatibility checks, transitions, A/B testing."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import model_management as M
from constants import Pair, feature_names, paths
from error_handling import ConfigurationError, ModelIntegrityError

PAIR = Pair("AAPL", "MSFT")
OTHER_PAIR = Pair("KO", "PEP")
FEATURES = tuple(feature_names("AAPL", "MSFT"))


@pytest.fixture
def artifacts(tmp_path) -> Path:
    """A small real model directory: a binary 'model' and a JSON scaler."""
    directory = tmp_path / "trained"
    directory.mkdir()
    (directory / "model.bin").write_bytes(bytes(range(256)) * 4)
    (directory / "scaler.json").write_text(json.dumps({"mean": [0.1, 0.2], "std": [1.0, 2.0]}))
    return directory


@pytest.fixture
def registry(tmp_path) -> M.ModelRegistry:
    return M.ModelRegistry(tmp_path / "models", home=tmp_path)


def register(
    registry: M.ModelRegistry, artifacts: Path, name: str = "xgb", **kwargs
) -> M.ModelRecord:
    options = {
        "pair": PAIR,
        "feature_names": FEATURES,
        "lookback": 20,
        "metadata": {"train": ["2010-01-04", "2019-12-31"], "accuracy": 0.56},
    }
    options.update(kwargs)
    return registry.register(name, artifacts, **options)


def alerts(home: Path) -> list[dict]:
    log = paths(home).alerts_log
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


# --- Registration and queries ---------------------------------------------------------------------
def test_registered_model_round_trips_through_the_index_on_disk(registry, artifacts, tmp_path):
    record = register(registry, artifacts)

    assert registry.list() == [record]
    assert registry.get(record.version) == record
    assert registry.get_active_model("xgb", PAIR) == record
    reopened = M.ModelRegistry(tmp_path / "models", home=tmp_path)
    assert reopened.get(record.version) == record
    assert reopened.list(name="xgb", pair=PAIR) == [record]
    assert M.ModelRecord.from_dict(record.to_dict()) == record


def test_register_copies_the_files_and_records_their_sha256(registry, artifacts):
    record = register(registry, artifacts)

    stored = registry.model_dir(record.version)
    assert sorted(p.name for p in stored.iterdir()) == ["model.bin", "scaler.json"]
    assert (stored / "model.bin").read_bytes() == (artifacts / "model.bin").read_bytes()
    assert record.artifacts["model.bin"] == M.sha256_file(artifacts / "model.bin")
    assert record.feature_names == FEATURES
    assert record.lookback == 20
    assert record.metadata["accuracy"] == 0.56
    assert record.version.startswith("xgb-AAPL_MSFT-")
    assert datetime.fromisoformat(record.created).utcoffset().total_seconds() == 0


def test_register_leaves_no_temporary_directory_behind(registry, artifacts):
    record = register(registry, artifacts)
    entries = sorted(p.name for p in registry.root.iterdir())
    assert entries == sorted([record.version, "registry.json", "registry.lock"])


def test_versions_are_unique_even_when_registered_at_the_same_instant(tmp_path, artifacts):
    frozen = datetime(2024, 5, 1, 13, 30, tzinfo=UTC)
    registry = M.ModelRegistry(tmp_path / "models", clock=lambda: frozen)

    versions = {register(registry, artifacts).version for _ in range(3)}
    assert len(versions) == 3


def test_first_model_is_active_and_the_next_is_a_canary_with_the_canary_fraction(
    tmp_path, artifacts
):
    registry = M.ModelRegistry(tmp_path / "models", canary_fraction=0.2)
    first = register(registry, artifacts)
    second = register(registry, artifacts)

    assert (first.status, first.traffic_fraction) == (M.ModelStatus.ACTIVE, 1.0)
    assert (second.status, second.traffic_fraction) == (M.ModelStatus.CANARY, 0.2)
    assert registry.get_canary("xgb", PAIR) == second


def test_a_new_canary_retires_the_previous_canary(registry, artifacts):
    register(registry, artifacts)
    old_canary = register(registry, artifacts)
    new_canary = register(registry, artifacts)

    assert registry.get(old_canary.version).status is M.ModelStatus.RETIRED
    assert registry.get(old_canary.version).traffic_fraction == 0.0
    assert registry.get_canary("xgb", PAIR) == new_canary


def test_models_of_other_kinds_and_pairs_are_separate_champions(registry, artifacts):
    xgb = register(registry, artifacts)
    lstm = register(registry, artifacts, name="lstm")
    other = register(registry, artifacts, pair=OTHER_PAIR)

    assert {r.status for r in (xgb, lstm, other)} == {M.ModelStatus.ACTIVE}
    assert registry.list(name="lstm") == [lstm]
    assert registry.list(pair=OTHER_PAIR) == [other]


def test_list_is_newest_first(registry, artifacts):
    versions = [register(registry, artifacts).version for _ in range(3)]
    assert [r.version for r in registry.list()] == versions[::-1]


def test_unknown_version_names_the_command_that_lists_models(registry):
    with pytest.raises(ConfigurationError, match=r"unknown model version nope; see `python main"):
        registry.get("nope")


def test_registering_an_empty_directory_is_refused(registry, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigurationError, match="no model files"):
        register(registry, tmp_path / "empty")


def test_status_changes_are_logged_with_version_and_old_and_new_status(registry, artifacts, caplog):
    caplog.set_level(logging.INFO, logger="model_management")
    first = register(registry, artifacts)
    second = register(registry, artifacts)
    registry.promote(second.version)

    changes = [
        (r.model_version, r.old_status, r.new_status)
        for r in caplog.records
        if r.name == "model_management"
    ]
    assert changes == [
        (first.version, None, "active"),
        (second.version, None, "canary"),
        (first.version, "active", "retired"),
        (second.version, "canary", "active"),
    ]


# --- Integrity and compatibility ------------------------------------------------------------------
def test_verified_model_loads_and_returns_its_directory(registry, artifacts):
    record = register(registry, artifacts)
    assert registry.verify(record.version) == []
    directory = registry.load(record.version, pair=PAIR, feature_names=FEATURES)
    assert (directory / "model.bin").is_file()


def test_one_flipped_byte_refuses_to_load_and_writes_a_critical_alert(
    registry, artifacts, tmp_path
):
    record = register(registry, artifacts)
    stored = registry.model_dir(record.version) / "model.bin"
    data = bytearray(stored.read_bytes())
    data[100] ^= 0x01
    stored.write_bytes(bytes(data))

    assert registry.verify(record.version) == ["model.bin"]
    with pytest.raises(ModelIntegrityError, match=rf"{record.version}.*model\.bin"):
        registry.load(record.version, pair=PAIR, feature_names=FEATURES)
    (alert,) = alerts(tmp_path)
    assert alert["severity"] == "CRITICAL"
    assert alert["source"] == "model_registry"
    assert record.version in alert["message"]
    assert alert["details"]["files"] == ["model.bin"]


def test_integrity_alert_goes_to_trading_home_by_default(tmp_path, artifacts, monkeypatch):
    monkeypatch.setenv("TRADING_HOME", str(tmp_path))
    registry = M.ModelRegistry()
    record = register(registry, artifacts)
    assert registry.root == paths(tmp_path).models_dir
    (registry.model_dir(record.version) / "scaler.json").unlink()

    with pytest.raises(ModelIntegrityError, match=r"scaler\.json"):
        registry.load(record.version, pair=PAIR, feature_names=FEATURES)
    assert [a["severity"] for a in alerts(tmp_path)] == ["CRITICAL"]


def test_integrity_is_checked_before_compatibility(registry, artifacts, tmp_path):
    record = register(registry, artifacts)
    (registry.model_dir(record.version) / "model.bin").write_bytes(b"tampered")

    with pytest.raises(ModelIntegrityError, match="integrity"):
        registry.load(record.version, pair=OTHER_PAIR, feature_names=["x"])
    assert len(alerts(tmp_path)) == 1


def test_a_model_of_another_pair_refuses_to_load_with_the_retrain_command(registry, artifacts):
    record = register(registry, artifacts)
    with pytest.raises(ModelIntegrityError) as caught:
        registry.load(record.version, pair=OTHER_PAIR, feature_names=FEATURES)
    assert str(caught.value) == (
        f"model {record.version} was trained for AAPL/MSFT, not KO/PEP; "
        "retrain with `python main.py train --long KO --short PEP`, then make the new version "
        "active with `python main.py models promote VERSION` (a new model starts as a canary; "
        "`python main.py models` lists the versions)"
    )


def test_a_different_feature_list_refuses_to_load_naming_missing_and_extra(registry, artifacts):
    record = register(registry, artifacts)
    wanted = [*FEATURES[1:], "AAPL_volume_ratio"]
    with pytest.raises(ModelIntegrityError) as caught:
        registry.load(record.version, pair=PAIR, feature_names=wanted)
    message = str(caught.value)
    assert f"missing from the data: {FEATURES[0]}" in message
    assert "not known to the model: AAPL_volume_ratio" in message
    assert "python main.py train --long AAPL --short MSFT" in message


def test_reordered_features_refuse_to_load(registry, artifacts):
    record = register(registry, artifacts)
    with pytest.raises(ModelIntegrityError, match="different order"):
        registry.load(record.version, pair=PAIR, feature_names=FEATURES[::-1])


def test_compatibility_failures_write_no_alert(registry, artifacts, tmp_path):
    record = register(registry, artifacts)
    with pytest.raises(ModelIntegrityError):
        registry.load(record.version, pair=OTHER_PAIR, feature_names=FEATURES)
    assert alerts(tmp_path) == []


# --- Transitions ----------------------------------------------------------------------------------
def test_promote_makes_the_canary_active_and_retires_the_champion(registry, artifacts):
    champion = register(registry, artifacts)
    canary = register(registry, artifacts)

    promoted = registry.promote(canary.version)

    assert (promoted.status, promoted.traffic_fraction) == (M.ModelStatus.ACTIVE, 1.0)
    assert promoted.replaces == champion.version
    assert registry.get(champion.version).status is M.ModelStatus.RETIRED
    assert registry.get_active_model("xgb", PAIR) == promoted
    assert registry.get_canary("xgb", PAIR) is None


def test_rollback_with_a_canary_retires_the_canary_and_keeps_the_champion(registry, artifacts):
    champion = register(registry, artifacts)
    canary = register(registry, artifacts)

    assert registry.rollback("xgb", PAIR) == champion
    assert registry.get(canary.version).status is M.ModelStatus.RETIRED
    assert registry.get_active_model("xgb", PAIR) == champion


def test_rollback_without_a_canary_restores_the_previous_champion(registry, artifacts):
    first = register(registry, artifacts)
    second = register(registry, artifacts)
    registry.promote(second.version)
    third = register(registry, artifacts)
    registry.promote(third.version)

    restored = registry.rollback("xgb", PAIR)
    assert restored.version == second.version
    assert registry.get(third.version).status is M.ModelStatus.RETIRED
    assert registry.rollback("xgb", PAIR).version == first.version
    assert registry.get_active_model("xgb", PAIR).version == first.version


def test_rollback_skips_failed_canaries_when_restoring_a_champion(registry, artifacts):
    first = register(registry, artifacts)
    failed = register(registry, artifacts)
    registry.rollback("xgb", PAIR)  # the canary goes
    second = register(registry, artifacts)
    registry.promote(second.version)

    assert registry.rollback("xgb", PAIR).version == first.version
    assert registry.get(failed.version).status is M.ModelStatus.RETIRED


def test_rollback_with_nothing_to_go_back_to_is_refused(registry, artifacts):
    register(registry, artifacts)
    with pytest.raises(ConfigurationError, match="nothing to roll back to"):
        registry.rollback("xgb", PAIR)
    with pytest.raises(ConfigurationError, match="nothing to roll back to"):
        registry.rollback("lstm", PAIR)


def test_retire_takes_a_canary_out_of_traffic(registry, artifacts):
    register(registry, artifacts)
    canary = register(registry, artifacts)
    retired = registry.retire(canary.version)
    assert (retired.status, retired.traffic_fraction) == (M.ModelStatus.RETIRED, 0.0)
    assert registry.get_canary("xgb", PAIR) is None


def test_a_retired_staging_model_can_not_be_promoted_afterwards(registry, artifacts):
    register(registry, artifacts)
    canary = register(registry, artifacts)
    registry.retire(canary.version)
    with pytest.raises(ConfigurationError, match=r"cannot promote .* it is retired"):
        registry.promote(canary.version)


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        ("promote_active", "cannot promote .* it is active"),
        ("retire_active", "cannot retire .* it is the active xgb model of AAPL/MSFT"),
        ("retire_retired", "already retired"),
        ("promote_unknown", "unknown model version"),
    ],
)
def test_invalid_transitions_are_refused_with_a_one_line_message(
    registry, artifacts, operation, message
):
    champion = register(registry, artifacts)
    canary = register(registry, artifacts)
    registry.retire(canary.version)
    before = registry.list()
    action = {
        "promote_active": lambda: registry.promote(champion.version),
        "retire_active": lambda: registry.retire(champion.version),
        "retire_retired": lambda: registry.retire(canary.version),
        "promote_unknown": lambda: registry.promote("xgb-AAPL_MSFT-missing"),
    }[operation]

    with pytest.raises(ConfigurationError, match=message) as caught:
        action()
    assert "\n" not in str(caught.value)
    assert registry.list() == before


def test_invalid_canary_fraction_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="canary_fraction"):
        M.ModelRegistry(tmp_path, canary_fraction=1.5)


# --- Concurrency ----------------------------------------------------------------------------------
def test_concurrent_registrations_from_threads_all_reach_the_index(tmp_path, artifacts):
    root = tmp_path / "models"
    workers, per_worker = 4, 5
    start = threading.Barrier(workers)
    made: list[str] = []

    def work() -> None:
        registry = M.ModelRegistry(root)  # each thread its own instance: only the lock is shared
        start.wait()
        for _ in range(per_worker):
            made.append(register(registry, artifacts).version)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    indexed = M.ModelRegistry(root).list()
    assert sorted(r.version for r in indexed) == sorted(made)
    assert len(made) == workers * per_worker
    assert [r.status for r in indexed].count(M.ModelStatus.ACTIVE) == 1
    assert [r.status for r in indexed].count(M.ModelStatus.CANARY) == 1


def _register_in_process(root: str, artifact_dir: str, count: int) -> None:
    registry = M.ModelRegistry(Path(root))
    for _ in range(count):
        registry.register(
            "xgb", Path(artifact_dir), pair=PAIR, feature_names=FEATURES, lookback=None
        )


def test_concurrent_registrations_from_processes_all_reach_the_index(tmp_path, artifacts):
    root = tmp_path / "models"
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_register_in_process, args=(str(root), str(artifacts), 3))
        for _ in range(4)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]

    indexed = M.ModelRegistry(root).list()
    assert len({r.version for r in indexed}) == 12
    assert all(M.ModelRegistry(root).verify(r.version) == [] for r in indexed)


# --- A/B testing ----------------------------------------------------------------------------------
@pytest.fixture
def ab(tmp_path, artifacts) -> tuple[M.ABTestController, M.ModelRecord, M.ModelRecord]:
    """A controller over a champion and a 10% canary."""
    registry = M.ModelRegistry(tmp_path / "models", canary_fraction=0.1)
    champion = register(registry, artifacts)
    challenger = register(registry, artifacts)
    return M.ABTestController(registry, "xgb", PAIR), champion, challenger


def test_split_sends_the_canary_fraction_of_keys_to_the_challenger(ab):
    controller, _, challenger = ab
    keys = [f"2024-01-02T15:{i:05d}" for i in range(10_000)]
    share = sum(controller.select_model(k) == challenger for k in keys) / len(keys)
    assert abs(share - 0.1) <= 0.015


def test_split_is_stable_per_key_across_controller_instances(ab):
    controller, _, _ = ab
    again = M.ABTestController(controller.registry, "xgb", PAIR)
    keys = [f"order-{i}" for i in range(500)]
    assert [controller.select_model(k).version for k in keys] == [
        again.select_model(k).version for k in keys
    ]


def test_without_a_canary_the_champion_serves_every_key(tmp_path, artifacts):
    registry = M.ModelRegistry(tmp_path / "models")
    champion = register(registry, artifacts)
    controller = M.ABTestController(registry, "xgb", PAIR)
    assert {controller.select_model(str(i)).version for i in range(200)} == {champion.version}


def test_without_an_active_model_selection_says_to_train(tmp_path):
    controller = M.ABTestController(M.ModelRegistry(tmp_path / "models"), "xgb", PAIR)
    with pytest.raises(ConfigurationError, match=r"no active xgb model .* `python main\.py train"):
        controller.select_model("k")


def record(controller: M.ABTestController, version: str, hits: int, n: int) -> None:
    """Record `hits` hits and `n - hits` misses for `version` (in two bulk calls)."""
    for hit, count in ((True, hits), (False, n - hits)):
        if count:
            controller.record_outcome(version, hit, count=count)


def test_outcomes_survive_a_restart(ab):
    controller, champion, _ = ab
    for hit in (True, True, False):
        controller.record_outcome(champion.version, hit)
    restarted = M.ABTestController(
        M.ModelRegistry(controller.registry.root), "xgb", PAIR, min_samples=1
    )
    assert restarted.counts(champion.version) == (2, 3)


def test_outcomes_of_a_model_from_another_test_are_refused(ab, artifacts):
    controller, _, _ = ab
    other = register(controller.registry, artifacts, name="lstm")
    with pytest.raises(ConfigurationError, match="not of this A/B test"):
        controller.record_outcome(other.version, True)


def test_evaluation_continues_below_min_samples(ab):
    controller, champion, challenger = ab
    record(controller, champion.version, 99, 99)
    record(controller, challenger.version, 0, 99)

    decision = controller.evaluate()
    assert decision.action is M.PromotionAction.CONTINUE
    assert (decision.n_champion, decision.n_challenger) == (99, 99)
    assert "need 100 outcomes" in decision.reason


def test_a_degraded_challenger_is_rolled_back(ab):
    controller, champion, challenger = ab
    for i in range(300):  # one outcome at a time, as the live loop reports them
        controller.record_outcome(champion.version, i % 5 < 3)  # 60% hits
        controller.record_outcome(challenger.version, i % 5 < 2)  # 40% hits

    decision = controller.evaluate()
    assert decision.action == "rollback"
    assert decision.champion_hit_rate == pytest.approx(0.6)
    assert decision.challenger_hit_rate == pytest.approx(0.4)
    assert decision.z < 0

    state = controller.apply(decision)
    assert state.champion == controller.registry.get(champion.version)
    assert state.challenger is None
    assert controller.registry.get(challenger.version).status is M.ModelStatus.RETIRED


def test_a_better_challenger_is_promoted(ab):
    controller, champion, challenger = ab
    record(controller, champion.version, 150, 300)
    record(controller, challenger.version, 195, 300)

    decision = controller.evaluate()
    assert decision.action == "promote"
    assert decision.p_value < 0.05

    state = controller.apply(decision)
    assert state.champion.version == challenger.version
    assert state.challenger is None
    assert controller.registry.get(champion.version).status is M.ModelStatus.RETIRED


def test_a_small_insignificant_difference_continues(ab):
    controller, champion, challenger = ab
    record(controller, champion.version, 150, 300)
    record(controller, challenger.version, 156, 300)
    decision = controller.evaluate()
    assert decision.action is M.PromotionAction.CONTINUE
    assert decision.p_value > 0.05


def test_a_challenger_within_the_margin_but_significantly_worse_is_rolled_back(tmp_path, artifacts):
    registry = M.ModelRegistry(tmp_path / "models")
    champion, challenger = register(registry, artifacts), register(registry, artifacts)
    controller = M.ABTestController(registry, "xgb", PAIR, rollback_margin=0.10)
    record(controller, champion.version, 6_000, 10_000)
    record(controller, challenger.version, 5_700, 10_000)

    decision = controller.evaluate()
    assert decision.action is M.PromotionAction.ROLLBACK
    assert "significantly worse" in decision.reason


def test_a_stale_decision_is_not_applied(ab, artifacts):
    controller, champion, challenger = ab
    record(controller, champion.version, 150, 300)
    record(controller, challenger.version, 195, 300)
    decision = controller.evaluate()
    register(controller.registry, artifacts)  # a newer canary replaces the evaluated one

    with pytest.raises(ConfigurationError, match="stale A/B decision"):
        controller.apply(decision)


@pytest.mark.parametrize(
    ("hits_a", "n_a", "hits_b", "n_b"),
    [(180, 300, 120, 300), (150, 300, 195, 300), (50, 120, 61, 130), (7, 10, 700, 1000)],
)
def test_z_test_matches_scipy_normal_distribution(hits_a, n_a, hits_b, n_b):
    z, p = M.two_proportion_ztest(hits_a, n_a, hits_b, n_b)

    pooled = (hits_a + hits_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    expected_z = (hits_b / n_b - hits_a / n_a) / se
    assert z == pytest.approx(expected_z)
    assert p == pytest.approx(2 * stats.norm.sf(abs(expected_z)), rel=1e-9)


def test_z_test_matches_statsmodels_proportions_ztest():
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    z, p = M.two_proportion_ztest(150, 300, 195, 300)
    expected_z, expected_p = proportion.proportions_ztest([195, 150], [300, 300])
    assert z == pytest.approx(expected_z)
    assert p == pytest.approx(expected_p)


@given(
    n_a=st.integers(1, 2_000),
    n_b=st.integers(1, 2_000),
    rate_a=st.floats(0, 1),
    rate_b=st.floats(0, 1),
)
def test_z_test_p_value_is_a_probability_and_z_points_to_the_better_sample(
    n_a, n_b, rate_a, rate_b
):
    hits_a, hits_b = round(rate_a * n_a), round(rate_b * n_b)
    z, p = M.two_proportion_ztest(hits_a, n_a, hits_b, n_b)
    assert 0.0 <= p <= 1.0
    difference = hits_b / n_b - hits_a / n_a
    assert z == 0.0 or math.copysign(1, z) == math.copysign(1, difference)
    if z != 0.0:
        assert p == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-6, abs=1e-300)


def test_z_test_with_identical_all_hit_samples_has_no_evidence():
    assert M.two_proportion_ztest(10, 10, 20, 20) == (0.0, 1.0)


# --- Verified hashes, cached by (path, size, mtime) -----------------------------------------------
def test_a_verified_artifact_is_hashed_again_only_when_it_changes_or_the_cache_ages(tmp_path):
    import hashlib
    import os

    import model_management as mm

    path = tmp_path / "model.json"
    path.write_bytes(b"the model, version 1")
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert mm.artifact_matches(path, expected)
    # Another size: hashed again at once, and refused.
    path.write_bytes(b"the model, version 2!")
    assert not mm.artifact_matches(path, expected)
    # Same size and the old mtime restored: the cache still trusts it until it ages...
    path.write_bytes(b"the model, version 1")
    assert mm.artifact_matches(path, expected)
    stat = path.stat()
    path.write_bytes(b"the model, version X")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert mm.artifact_matches(path, expected)
    # ...then the periodic re-hash finds the change.
    assert not mm.artifact_matches(path, expected, max_age_s=0.0)
    assert not mm.artifact_matches(tmp_path / "missing.json", expected)
    assert not mm.artifact_matches(tmp_path, expected)  # a directory is not an artifact
