"""logging_config.py: JSON-lines file log, console log, redaction of secrets, the alerts.log sink
(written here through model_drift_detection.log_drift_alert, the producer of drift alerts)."""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime as dt
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import logging_config as L
from constants import paths
from error_handling import ConfigurationError
from model_drift_detection import log_drift_alert

SECRET = "sk-live-7f3a9c1e5b2d4f60"


@pytest.fixture(autouse=True)
def restore_root_logger():
    """Give the root logger back exactly as it was, so other tests see no handlers of ours."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture(autouse=True)
def no_secrets_in_env(monkeypatch):
    """Secrets of the machine running the tests must not change what the tests see."""
    for name in list(os.environ):
        if any(marker in name.upper() for marker in L.SECRET_ENV_MARKERS):
            monkeypatch.delenv(name)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def logged(tmp_path: Path) -> list[dict]:
    return read_lines(paths(tmp_path).app_log)


# --- The JSON file log ----------------------------------------------------------------------------
def test_each_record_is_one_json_line_with_time_level_logger_and_message(tmp_path):
    L.setup_logging("INFO", home=tmp_path, console=False)
    logging.getLogger("pairs.signals").info("spread z-score %.2f", 2.5)

    (entry,) = logged(tmp_path)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "pairs.signals"
    assert entry["message"] == "spread z-score 2.50"
    assert dt.fromisoformat(entry["time"]).utcoffset() == timedelta(0)


def test_creates_the_logs_directory(tmp_path):
    L.setup_logging(home=tmp_path, console=False)
    assert paths(tmp_path).logs_dir.is_dir()


def test_home_defaults_to_trading_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TRADING_HOME", str(tmp_path))
    L.setup_logging(console=False)
    logging.getLogger("x").warning("hello")
    assert [e["message"] for e in logged(tmp_path)] == ["hello"]


def test_extra_fields_are_written_and_unserializable_ones_as_text(tmp_path):
    class Order:
        def __str__(self) -> str:
            return "Order(AAPL, 10)"

    L.setup_logging(home=tmp_path, console=False)
    logging.getLogger("exec").info(
        "filled",
        extra={"client_order_id": "abc-1", "qty": 10, "legs": ["AAPL", "MSFT"], "order": Order()},
    )

    (entry,) = logged(tmp_path)
    assert entry["client_order_id"] == "abc-1"
    assert entry["qty"] == 10
    assert entry["legs"] == ["AAPL", "MSFT"]
    assert entry["order"] == "Order(AAPL, 10)"


def test_non_finite_floats_are_written_as_text_so_lines_stay_strict_json(tmp_path):
    L.setup_logging(home=tmp_path, console=False)
    logging.getLogger("risk").info("ratio", extra={"hedge_ratio": float("nan")})

    line = paths(tmp_path).app_log.read_text().strip()
    assert json.loads(line, parse_constant=pytest.fail)["hedge_ratio"] == "nan"


def test_an_extra_named_like_a_core_field_does_not_overwrite_it(tmp_path):
    L.setup_logging(home=tmp_path, console=False)
    logging.getLogger("x").info("m", extra={"level": "mine"})

    (entry,) = logged(tmp_path)
    assert entry["level"] == "INFO"
    assert entry["extra_level"] == "mine"


def test_exception_text_is_written_when_present(tmp_path):
    L.setup_logging(home=tmp_path, console=False)
    try:
        raise ZeroDivisionError("no volatility")
    except ZeroDivisionError:
        logging.getLogger("x").exception("sizing failed")

    (entry,) = logged(tmp_path)
    assert "ZeroDivisionError: no volatility" in entry["exc_info"]


def test_records_below_the_file_level_are_not_written(tmp_path):
    L.setup_logging("WARNING", home=tmp_path, console=False)
    logging.getLogger("x").info("quiet")
    logging.getLogger("x").warning("loud")
    assert [e["message"] for e in logged(tmp_path)] == ["loud"]


def test_file_rotates_at_max_bytes_and_every_line_of_every_file_is_json(tmp_path):
    L.setup_logging(home=tmp_path, console=False, max_bytes=600, backup_count=3)
    log = logging.getLogger("bulk")
    for i in range(60):
        log.info("message %03d %s", i, "x" * 60)

    app_log = paths(tmp_path).app_log
    files = [app_log, *(app_log.with_name(f"trading.log.{n}") for n in (1, 2, 3))]
    assert all(f.exists() for f in files)
    assert not app_log.with_name("trading.log.4").exists()
    for f in files:
        assert f.stat().st_size <= 600
        assert read_lines(f)  # parses, and is not empty
    assert read_lines(app_log)[-1]["message"].startswith("message 059")


def test_unknown_level_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="unknown log level 'LOUD'"):
        L.setup_logging("LOUD", home=tmp_path)


# --- The console ----------------------------------------------------------------------------------
def test_console_shows_a_readable_line_on_stderr(tmp_path, capsys):
    L.setup_logging(home=tmp_path, json_file=False)
    logging.getLogger("live").warning("market closed")

    err = capsys.readouterr().err
    assert "WARNING" in err
    assert "live: market closed" in err
    assert not paths(tmp_path).app_log.exists()


def test_console_level_is_separate_from_file_level(tmp_path, capsys):
    L.setup_logging("DEBUG", home=tmp_path, console_level="WARNING")
    log = logging.getLogger("x")
    log.debug("detail")
    log.warning("problem")

    assert [e["message"] for e in logged(tmp_path)] == ["detail", "problem"]
    err = capsys.readouterr().err
    assert "problem" in err
    assert "detail" not in err


def test_calling_setup_twice_writes_each_message_once(tmp_path, capsys):
    L.setup_logging(home=tmp_path)
    L.setup_logging(home=tmp_path)
    logging.getLogger("x").info("once")

    assert [e["message"] for e in logged(tmp_path)] == ["once"]
    assert capsys.readouterr().err.count("once") == 1


def test_setup_leaves_handlers_of_others_in_place(tmp_path):
    foreign = logging.NullHandler()
    logging.getLogger().addHandler(foreign)
    L.setup_logging(home=tmp_path, console=False)
    L.setup_logging(home=tmp_path, console=False)
    assert foreign in logging.getLogger().handlers


# --- Redaction in the logs ------------------------------------------------------------------------
def log_and_read(tmp_path, capsys, message: str, *args: object) -> tuple[str, str]:
    """Log `message` from a child logger; return (file text, console text)."""
    logging.getLogger("app.broker").warning(message, *args)
    return paths(tmp_path).app_log.read_text(encoding="utf-8"), capsys.readouterr().err


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        (f"ALPACA_SECRET_KEY={SECRET}", SECRET),
        (f"connecting with api_key: {SECRET}", SECRET),
        (f'payload {{"password": "{SECRET}"}}', SECRET),
        (f"headers {{'Authorization': 'Bearer {SECRET}'}}", SECRET),
        (f"curl -H 'Authorization: Bearer {SECRET}'", SECRET),
        (
            f"post to https://{L.SLACK_WEBHOOK_HOST}/services/T0123/B0456/abcdefXYZ123",
            "abcdefXYZ123",
        ),
        ("post to https://discord.com/api/webhooks/123456789/tok_En-abc.def", "tok_En-abc.def"),
        (f"GET https://data.example.com/v1/bars?symbol=AAPL&apikey={SECRET}&x=1", SECRET),
        (f"GET https://data.example.com/v1/bars?token={SECRET}", SECRET),
    ],
)
def test_recognised_secrets_are_redacted_in_file_and_console(tmp_path, capsys, message, secret):
    L.setup_logging(home=tmp_path)
    file_text, console_text = log_and_read(tmp_path, capsys, message)
    for text in (file_text, console_text):
        assert secret not in text
        assert L.REDACTED in text


def test_env_secret_values_are_redacted_anywhere_in_the_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALPACA_API_KEY", "PKAB12CD34EF56")
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "https://alerts.example.com/hook/9f8e7d6c")
    monkeypatch.setenv("TRADING_MASTER_PASSWORD", "correct horse battery")
    L.setup_logging(home=tmp_path)

    file_text, console_text = log_and_read(
        tmp_path,
        capsys,
        "key PKAB12CD34EF56, hook https://alerts.example.com/hook/9f8e7d6c, "
        "pw correct horse battery",
    )
    for text in (file_text, console_text):
        for value in ("PKAB12CD34EF56", "alerts.example.com", "correct horse"):
            assert value not in text


def test_short_env_values_are_not_treated_as_secrets(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("USE_TOKEN", "yes")
    L.setup_logging(home=tmp_path, console=False)
    file_text, _ = log_and_read(tmp_path, capsys, "answer: yes")
    assert "answer: yes" in file_text


def test_secrets_in_percent_args_are_redacted(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    L.setup_logging(home=tmp_path)
    file_text, console_text = log_and_read(tmp_path, capsys, "using %s for %s", SECRET, "AAPL")
    for text in (file_text, console_text):
        assert SECRET not in text
        assert f"using {L.REDACTED} for AAPL" in text


def test_added_secrets_are_redacted(tmp_path, capsys):
    typed_at_prompt = "prompt-typed-9d8c7b6a"
    L.setup_logging(home=tmp_path)
    L.RedactingFilter.add_secret(typed_at_prompt)
    file_text, console_text = log_and_read(tmp_path, capsys, "unlocking with %s", typed_at_prompt)
    assert typed_at_prompt not in file_text
    assert typed_at_prompt not in console_text


def test_string_extras_and_secret_named_extras_are_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    L.setup_logging(home=tmp_path, console=False)
    logging.getLogger("x").info(
        "request",
        extra={"url": f"https://x.test/a?sig={SECRET}", "password": "hunter22", "n": 3},
    )

    (entry,) = logged(tmp_path)
    assert entry["url"] == f"https://x.test/a?sig={L.REDACTED}"
    assert entry["password"] == L.REDACTED
    assert entry["n"] == 3


def test_exception_text_is_redacted(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    L.setup_logging(home=tmp_path)
    try:
        raise PermissionError(f"401 for key {SECRET}")
    except PermissionError:
        logging.getLogger("broker").exception("login failed")

    file_text, console_text = paths(tmp_path).app_log.read_text(), capsys.readouterr().err
    assert "PermissionError: 401 for key" in console_text
    assert SECRET not in file_text
    assert SECRET not in console_text


def test_a_record_with_bad_format_args_is_still_written_and_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    before = set(logging.getLogger().handlers)
    root = L.setup_logging(home=tmp_path, console=False)
    (file_handler,) = [h for h in root.handlers if h not in before]
    # Handed to our handler directly: pytest's own capture handlers raise on such a record.
    file_handler.handle(logging.makeLogRecord({"msg": "two %s %s", "args": (SECRET,)}))

    (entry,) = logged(tmp_path)
    assert entry["message"].startswith("two %s %s")
    assert SECRET not in entry["message"]


def test_filter_is_on_every_handler_installed(tmp_path):
    before = set(logging.getLogger().handlers)
    root = L.setup_logging(home=tmp_path)
    ours = [h for h in root.handlers if h not in before]
    assert len(ours) == 2
    assert all(any(isinstance(f, L.RedactingFilter) for f in h.filters) for h in ours)


# --- redact() as a pure function ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("api_key=abc123", f"api_key={L.REDACTED}"),
        ("APIKEY: abc123", f"APIKEY: {L.REDACTED}"),
        ("secret_key = 'abc123'", f"secret_key = '{L.REDACTED}'"),
        ('{"access_token": "a\\"b"}', f'{{"access_token": "{L.REDACTED}"}}'),
        ("passwd=hunter2 user=bob", f"passwd={L.REDACTED} user=bob"),
        ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: Basic {L.REDACTED}"),
        ("postgres://bob:s3cr3t@db:5432/x", f"postgres://bob:{L.REDACTED}@db:5432/x"),
        ("token_count=5 tokens=7", "token_count=5 tokens=7"),
        ("https://x.test/a?symbol=AAPL&limit=5", "https://x.test/a?symbol=AAPL&limit=5"),
    ],
)
def test_redact_recognises_credentials_and_leaves_other_text(text, expected):
    assert L.redact(text) == expected


def test_redact_hides_the_whole_slack_path_but_keeps_the_host():
    slack = f"https://{L.SLACK_WEBHOOK_HOST}/services/"  # text only: nothing is sent anywhere
    text = L.redact(f"{slack}T0123ABC/B0456DEF/abcdefXYZ123 done")
    assert text == f"{slack}{L.REDACTED} done"


def test_redact_keeps_the_discord_webhook_id_and_hides_its_token():
    text = L.redact("https://discord.com/api/webhooks/123456789/tok_En-abc.def")
    assert text == f"https://discord.com/api/webhooks/123456789/{L.REDACTED}"


def test_redact_hides_the_url_encoded_form_of_a_secret():
    assert "a%2Fb%2Bc%3Dd" not in L.redact("q=a%2Fb%2Bc%3Dd", ["a/b+c=d"])


def test_empty_secrets_are_ignored():
    assert L.redact("nothing to hide", ["", ""]) == "nothing to hide"


@given(
    secret=st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=8
    ),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
)
def test_a_given_secret_never_survives_redaction(secret, before, after):
    assume(secret != "REDACTED")
    assert secret not in L.redact(before + secret + after, [secret])


@given(text=st.text(max_size=80))
def test_redact_is_idempotent(text):
    once = L.redact(text, ["hunter2hunter2"])
    assert L.redact(once, ["hunter2hunter2"]) == once


# --- Drift alerts ---------------------------------------------------------------------------------
def test_drift_alert_appends_one_json_line_with_the_alert_fields(tmp_path):
    record = log_drift_alert(
        "spread_z_AAPL_MSFT", 0.31, 0.2, model="xgb-v3", details={"test": "psi"}, home=tmp_path
    )

    (line,) = read_lines(paths(tmp_path).alerts_log)
    assert line == record
    assert line["severity"] == "HIGH"
    assert line["source"] == "drift_detection"
    assert line["title"] == "Feature drift: spread_z_AAPL_MSFT"
    assert "0.31" in line["message"]
    assert "0.2" in line["message"]
    assert line["details"] == {
        "feature": "spread_z_AAPL_MSFT",
        "statistic": 0.31,
        "threshold": 0.2,
        "model": "xgb-v3",
        "test": "psi",
    }
    assert dt.fromisoformat(line["time"]).utcoffset() == timedelta(0)


def test_drift_alerts_append_rather_than_overwrite(tmp_path):
    log_drift_alert("a", 1.0, 0.5, home=tmp_path)
    log_drift_alert("b", 2.0, 0.5, severity="critical", home=tmp_path)

    lines = read_lines(paths(tmp_path).alerts_log)
    assert [line["details"]["feature"] for line in lines] == ["a", "b"]
    assert lines[1]["severity"] == "CRITICAL"


def test_drift_alert_is_also_logged_as_a_warning(tmp_path):
    L.setup_logging(home=tmp_path, console=False)
    log_drift_alert("rsi_14", 0.4, 0.25, home=tmp_path)

    (entry,) = logged(tmp_path)
    assert entry["level"] == "WARNING"
    assert entry["alert"]["title"] == "Feature drift: rsi_14"


def test_drift_alert_line_is_redacted(tmp_path, monkeypatch):
    # A local port nothing listens on: the webhook sink's delivery fails fast, off the internet.
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hooks/abcdefgh")
    log_drift_alert(
        "x",
        1.0,
        0.5,
        details={
            "sent_to": "http://127.0.0.1:9/hooks/abcdefgh",
            "token": 12345678,
            "api_key": "k",
        },
        home=tmp_path,
    )

    text = paths(tmp_path).alerts_log.read_text()
    assert "abcdefgh" not in text
    (line,) = read_lines(paths(tmp_path).alerts_log)
    assert line["details"]["api_key"] == L.REDACTED


def test_concurrent_drift_alerts_produce_exactly_one_valid_line_each(tmp_path):
    writers = 24
    start = threading.Barrier(writers)
    padding = "p" * 20_000  # long lines make torn writes likely if they could happen

    def write(i: int) -> None:
        start.wait()
        log_drift_alert(f"f{i}", float(i), 0.5, details={"padding": padding}, home=tmp_path)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    lines = read_lines(paths(tmp_path).alerts_log)
    assert len(lines) == writers
    assert sorted(line["details"]["feature"] for line in lines) == sorted(
        f"f{i}" for i in range(writers)
    )


def test_prose_with_a_colon_after_a_key_name_is_not_redacted():
    """Error messages name variables ("ALPACA_SECRET_KEY: set both"); only secret-like values go."""
    from logging_config import redact

    text = "--source alpaca needs ALPACA_API_KEY and ALPACA_SECRET_KEY: set both in .env"
    assert redact(text) == text
    assert redact("ALPACA_SECRET_KEY: PKx9Qa77sTr0uVw1") == "ALPACA_SECRET_KEY: ***REDACTED***"
    assert redact("ALPACA_API_KEY: required") == "ALPACA_API_KEY: required"
    assert redact("password: hunter2") == "password: ***REDACTED***"  # has a digit
    assert redact("password=abc") == "password=***REDACTED***"  # '=' form: any value


def test_library_warnings_stay_off_the_console_but_reach_the_file(tmp_path, capsys):
    import json
    import logging

    from logging_config import setup_logging

    setup_logging("INFO", home=tmp_path, console_level="WARNING")
    logging.getLogger("yfinance.data").warning("Cookie fetch failed")
    logging.getLogger("yfinance").error("real yfinance error")
    logging.getLogger("process_stock_data").warning("our warning")
    err = capsys.readouterr().err
    assert "Cookie fetch failed" not in err
    assert "real yfinance error" in err and "our warning" in err
    lines = [json.loads(x) for x in (tmp_path / "logs" / "trading.log").read_text().splitlines()]
    assert "Cookie fetch failed" in [x["message"] for x in lines]
