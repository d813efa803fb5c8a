"""Alert dispatch against a real HTTP receiver on 127.0.0.1 (pytest-httpserver): delivery,
signing, retries, failures that never reach the caller, coalescing, the unrouted warning, and the
producers (risk halt, circuit breaker, drift) routed through it."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from werkzeug import Request, Response

import alert_dispatch as ad
import api_security
import risk_management as rm
from constants import paths
from error_handling import CircuitBreaker
from tests.helpers import run

SECRET = "whsec-test-0123456789abcdef"


def read_alerts(home) -> list[dict]:
    log = paths(home).alerts_log
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def alert(title: str = "Breaker open", severity: str = "CRITICAL", **details) -> ad.Alert:
    return ad.Alert(ad.Severity.parse(severity), "test", title, f"{title}: details", details)


def dispatcher(home, url: str | None, **kw) -> ad.AlertDispatcher:
    webhook = None if url is None else ad.WebhookConfig(url, **kw.pop("webhook_kw", {}))
    return ad.AlertDispatcher(home, webhook=webhook, stderr=kw.pop("stderr", io.StringIO()), **kw)


def posted(httpserver, path: str) -> list:
    """Requests this test's receiver path got (the server and its log are shared by tests)."""
    return [request for request, _ in httpserver.log if request.path == path]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --- Delivery ---------------------------------------------------------------------------------
def test_receiver_gets_a_slack_discord_and_generic_body_with_a_signature_that_verifies(
    tmp_path, httpserver
):
    httpserver.expect_request("/hooks/abc", method="POST").respond_with_data("ok")
    d = dispatcher(tmp_path, httpserver.url_for("/hooks/abc"), webhook_kw={"secret": SECRET})

    result = d.dispatch(alert("Trading halted", "CRITICAL", equity=91_000.0))
    assert result.webhook == "queued"
    assert d.flush(10)

    (request,) = posted(httpserver, "/hooks/abc")
    body = json.loads(request.get_data())
    assert body["text"].startswith("[CRITICAL] test: Trading halted")  # Slack
    assert body["content"] == body["text"]  # Discord
    assert (body["severity"], body["source"], body["title"]) == (
        "CRITICAL",
        "test",
        "Trading halted",
    )
    assert body["details"] == {"equity": 91_000.0}
    assert body["message"] == "Trading halted: details"
    # The signature covers method, path and body; it verifies with the shared secret only.
    api_security.verify_request(
        "POST",
        "/hooks/abc",
        request.get_data(),
        dict(request.headers),
        SECRET,
        nonce_cache=api_security.NonceCache(),
    )
    with pytest.raises(api_security.SignatureError):
        api_security.verify_request(
            "POST",
            "/hooks/abc",
            request.get_data(),
            dict(request.headers),
            "another-secret",
            nonce_cache=api_security.NonceCache(),
        )
    (delivery,) = d.deliveries
    assert delivery.ok and delivery.status == 200 and delivery.attempts == 1
    # ...and the file sink has the same alert.
    (line,) = read_alerts(tmp_path)
    assert line["title"] == "Trading halted" and line["severity"] == "CRITICAL"


def test_unsigned_when_no_secret_is_configured(tmp_path, httpserver):
    httpserver.expect_request(
        "/unsigned_when_no_secret_is_configur", method="POST"
    ).respond_with_data("ok")
    d = dispatcher(tmp_path, httpserver.url_for("/unsigned_when_no_secret_is_configur"))
    d.dispatch(alert())
    assert d.flush(10)
    (request,) = posted(httpserver, "/unsigned_when_no_secret_is_configur")
    assert api_security.SIGNATURE_HEADER not in request.headers


def test_long_message_is_cut_to_discords_2000_characters_in_content_only(tmp_path, httpserver):
    httpserver.expect_request(
        "/long_message_is_cut_to_discords_200", method="POST"
    ).respond_with_data("ok")
    d = dispatcher(tmp_path, httpserver.url_for("/long_message_is_cut_to_discords_200"))
    d.dispatch(ad.Alert(ad.Severity.HIGH, "test", "Long", "x" * 5000))
    assert d.flush(10)
    body = json.loads(posted(httpserver, "/long_message_is_cut_to_discords_200")[0].get_data())
    assert len(body["content"]) == ad.DISCORD_CONTENT_LIMIT
    assert len(body["message"]) == 5000


# --- Failures never reach or block the caller --------------------------------------------------
def _timed_dispatch(d: ad.AlertDispatcher, a: ad.Alert) -> float:
    started = time.perf_counter()
    d.dispatch(a)
    return time.perf_counter() - started


def test_unreachable_receiver_neither_raises_nor_blocks(tmp_path, caplog):
    # Port 9 on 127.0.0.1: nothing listens, the connection is refused.
    d = dispatcher(tmp_path, "http://127.0.0.1:9/hook", webhook_kw={"backoff_s": 0.01})
    assert _timed_dispatch(d, alert()) < 0.25
    assert d.flush(10)
    (delivery,) = d.deliveries
    assert not delivery.ok and delivery.attempts == 3 and delivery.status is None
    assert "ConnectionError" in delivery.error
    assert "alert webhook delivery to http://127.0.0.1:9/... failed" in caplog.text
    assert len(read_alerts(tmp_path)) == 1  # the file sink still has it


def test_receiver_answering_500_is_retried_then_given_up_without_raising(tmp_path, httpserver):
    httpserver.expect_request(
        "/receiver_answering_500_is_retried_t", method="POST"
    ).respond_with_data("boom", status=500)
    d = dispatcher(
        tmp_path,
        httpserver.url_for("/receiver_answering_500_is_retried_t"),
        webhook_kw={"backoff_s": 0.01},
    )
    assert _timed_dispatch(d, alert()) < 0.25
    assert d.flush(10)
    assert len(posted(httpserver, "/receiver_answering_500_is_retried_t")) == 3
    (delivery,) = d.deliveries
    assert not delivery.ok and delivery.status == 500 and delivery.error == "HTTP 500"


def test_429_is_retried_until_accepted(tmp_path, httpserver):
    answers = iter([Response("slow down", status=429), Response("ok", status=200)])
    httpserver.expect_request("/429_is_retried_until_accepted", method="POST").respond_with_handler(
        lambda r: next(answers)
    )
    d = dispatcher(
        tmp_path,
        httpserver.url_for("/429_is_retried_until_accepted"),
        webhook_kw={"backoff_s": 0.01},
    )
    d.dispatch(alert())
    assert d.flush(10)
    (delivery,) = d.deliveries
    assert delivery.ok and delivery.attempts == 2


def test_a_4xx_rejection_is_not_retried(tmp_path, httpserver):
    httpserver.expect_request("/a_4xx_rejection_is_not_retried", method="POST").respond_with_data(
        "bad", status=400
    )
    d = dispatcher(
        tmp_path,
        httpserver.url_for("/a_4xx_rejection_is_not_retried"),
        webhook_kw={"backoff_s": 0.01},
    )
    d.dispatch(alert())
    assert d.flush(10)
    assert len(posted(httpserver, "/a_4xx_rejection_is_not_retried")) == 1
    assert d.deliveries[0].error == "HTTP 400"


def test_slow_receiver_does_not_block_the_caller_and_times_out(tmp_path, httpserver):
    def slow(request: Request) -> Response:
        time.sleep(1.5)
        return Response("late")

    httpserver.expect_request(
        "/slow_receiver_does_not_block_the_ca", method="POST"
    ).respond_with_handler(slow)
    d = dispatcher(
        tmp_path,
        httpserver.url_for("/slow_receiver_does_not_block_the_ca"),
        webhook_kw={"read_timeout_s": 0.3, "attempts": 1},
    )
    took = [_timed_dispatch(d, alert(f"a{i}")) for i in range(3)]
    assert max(took) < 0.25  # the receiver takes 1.5 s per request
    assert d.flush(10)
    assert [x.error for x in d.deliveries] == ["ReadTimeout"] * 3


def test_a_full_queue_drops_the_webhook_copy_but_not_the_file_line(tmp_path, httpserver):
    httpserver.expect_request(
        "/a_full_queue_drops_the_webhook_copy", method="POST"
    ).respond_with_handler(lambda r: (time.sleep(0.5), Response("ok"))[1])
    d = dispatcher(
        tmp_path, httpserver.url_for("/a_full_queue_drops_the_webhook_copy"), queue_size=1
    )
    results = [d.dispatch(alert(f"a{i}")) for i in range(4)]
    assert "queue full" in [r.webhook for r in results]
    assert d.dropped >= 1
    assert len(read_alerts(tmp_path)) == 4
    d.close(timeout_s=5)


def test_close_gives_up_on_a_hanging_receiver_within_its_timeout(tmp_path, httpserver):
    release = threading.Event()
    httpserver.expect_request("/hanging", method="POST").respond_with_handler(
        lambda r: (release.wait(10), Response("ok"))[1]
    )
    d = dispatcher(tmp_path, httpserver.url_for("/hanging"), webhook_kw={"read_timeout_s": 10})
    d.dispatch(alert())
    started = time.perf_counter()
    assert d.close(timeout_s=0.3) is False
    assert time.perf_counter() - started < 1.0
    release.set()  # let the request finish here, not in a later test
    assert d.flush(10)


# --- No webhook: a loud warning for what should page -------------------------------------------
@pytest.mark.parametrize("severity,warned", [("CRITICAL", True), ("HIGH", True), ("INFO", False)])
def test_paging_severity_without_a_webhook_warns_on_stderr(tmp_path, severity, warned):
    err = io.StringIO()
    d = dispatcher(tmp_path, None, stderr=err)
    result = d.dispatch(alert("Halt", severity))
    assert result.webhook == "not configured"
    assert ("!!! " in err.getvalue()) is warned
    if warned:
        assert "ALERT_WEBHOOK_URL" in err.getvalue() and "Halt" in err.getvalue()
    assert len(read_alerts(tmp_path)) == 1


# --- Coalescing --------------------------------------------------------------------------------
def test_identical_alerts_in_the_window_are_sent_once_and_counted(tmp_path, httpserver):
    httpserver.expect_request(
        "/identical_alerts_in_the_window_are_", method="POST"
    ).respond_with_data("ok")
    clock = Clock()
    d = dispatcher(
        tmp_path,
        httpserver.url_for("/identical_alerts_in_the_window_are_"),
        coalesce_window_s=60,
        clock=clock,
    )

    results = [d.dispatch(alert("Breaker open")) for _ in range(5)]
    assert [r.coalesced for r in results] == [False, True, True, True, True]
    d.dispatch(alert("Other"))  # a different alert is not absorbed
    clock.t += 61
    late = d.dispatch(alert("Breaker open"))
    assert late.record["details"]["repeats_suppressed"] == 4
    assert d.flush(10)

    lines = read_alerts(tmp_path)
    assert [line["title"] for line in lines] == ["Breaker open", "Other", "Breaker open"]
    bodies = [
        json.loads(r.get_data()) for r in posted(httpserver, "/identical_alerts_in_the_window_are_")
    ]
    assert len(bodies) == 3
    assert bodies[2]["repeats_suppressed"] == 4 and "+4 identical" in bodies[2]["text"]


def test_repeats_still_pending_are_reported_at_shutdown(tmp_path):
    d = dispatcher(tmp_path, None, coalesce_window_s=60, clock=Clock())
    for _ in range(3):
        d.dispatch(alert("Flapping"))
    assert d.close(timeout_s=1)
    lines = read_alerts(tmp_path)
    assert len(lines) == 2
    assert lines[1]["details"]["repeats_suppressed"] == 2
    assert "repeated 2 more times" in lines[1]["message"]


# --- Producers route through it --------------------------------------------------------------
def test_circuit_breaker_opening_raises_a_critical_alert(tmp_path, monkeypatch):
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    breaker = CircuitBreaker(
        "broker", failure_threshold=2, on_state_change=ad.breaker_alert_hook(tmp_path)
    )

    def fail() -> None:
        raise ConnectionError("broker unreachable")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    (line,) = read_alerts(tmp_path)
    assert line["severity"] == "CRITICAL" and line["source"] == "circuit_breaker"
    assert line["details"] == {"breaker": "broker", "from": "closed", "to": "open", "failures": 2}
    assert "broker unreachable" in line["message"]


def test_risk_halt_reaches_the_webhook(tmp_path, httpserver, monkeypatch):
    httpserver.expect_request("/risk", method="POST").respond_with_data("ok")
    monkeypatch.setenv("ALERT_WEBHOOK_URL", httpserver.url_for("/risk"))
    manager = rm.RiskManager(
        rm.RiskLimits(max_drawdown_pct=0.10),
        state_path=paths(tmp_path).risk_state_file,
        home=tmp_path,
    )
    import pandas as pd

    manager.update_equity(100_000.0, pd.Timestamp("2024-01-02", tz="UTC"))
    assert manager.update_equity(89_000.0, pd.Timestamp("2024-01-03", tz="UTC"))
    assert ad.get_dispatcher(tmp_path).flush(10)
    bodies = [json.loads(r.get_data()) for r in posted(httpserver, "/risk")]
    assert [(b["severity"], b["source"]) for b in bodies] == [("CRITICAL", "risk")]


def test_drift_alert_goes_through_the_dispatcher(tmp_path, httpserver, monkeypatch):
    import model_drift_detection

    httpserver.expect_request("/drift", method="POST").respond_with_data("ok")
    monkeypatch.setenv("ALERT_WEBHOOK_URL", httpserver.url_for("/drift"))
    model_drift_detection.log_drift_alert("rsi_14", 0.4, 0.25, model="xgb-1", home=tmp_path)
    assert ad.get_dispatcher(tmp_path).flush(10)
    (request,) = posted(httpserver, "/drift")
    assert json.loads(request.get_data())["title"] == "Feature drift: rsi_14"


def test_webhook_url_path_token_is_redacted_from_logs(tmp_path, caplog):
    token = "T0KEN0123456789abcdef"
    d = dispatcher(tmp_path, f"http://127.0.0.1:9/hooks/{token}", webhook_kw={"attempts": 1})
    d.dispatch(alert(f"sent to {token}", "INFO", url=f"http://127.0.0.1:9/hooks/{token}"))
    assert d.flush(10)
    assert token not in paths(tmp_path).alerts_log.read_text()
    assert ad.display_url(f"http://127.0.0.1:9/hooks/{token}") == "http://127.0.0.1:9/..."


def test_bad_webhook_url_is_refused_with_a_message_that_hides_it():
    with pytest.raises(ValueError, match="must be an http") as exc:
        ad.WebhookConfig("ftp://example/secret-path-0123456789")
    assert "secret-path" not in str(exc.value)


def test_unknown_severity_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown alert severity 'urgent'"):
        ad.Severity.parse("urgent")


# --- `main.py alerts test` -------------------------------------------------------------------
def test_alerts_test_delivers_to_a_local_receiver_and_says_so(tmp_path, httpserver):
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    proc = run(
        "main.py",
        "alerts",
        "test",
        "--severity",
        "critical",
        home=tmp_path,
        extra_env={
            "ALERT_WEBHOOK_URL": httpserver.url_for("/hook"),
            "ALERT_WEBHOOK_SECRET": SECRET,
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert "webhook: delivered to http://localhost" in proc.stdout or (
        "webhook: delivered to http://127.0.0.1" in proc.stdout
    )
    assert "(signed)" in proc.stdout
    (request,) = posted(httpserver, "/hook")
    api_security.verify_request(
        "POST",
        "/hook",
        request.get_data(),
        dict(request.headers),
        SECRET,
        nonce_cache=api_security.NonceCache(),
    )
    assert json.loads(request.get_data())["severity"] == "CRITICAL"


def test_alerts_test_without_a_webhook_warns_and_writes_the_file(tmp_path):
    proc = run("main.py", "alerts", "test", home=tmp_path, extra_env={"ALERT_WEBHOOK_URL": ""})
    assert proc.returncode == 0
    assert "!!! HIGH ALERT with no webhook" in proc.stderr
    assert "webhook: not configured" in proc.stderr
    (line,) = read_alerts(tmp_path)
    assert line["source"] == "alerts_test"


def test_alerts_test_with_a_failing_receiver_exits_9_with_one_line(tmp_path, httpserver):
    httpserver.expect_request("/hook", method="POST").respond_with_data("no", status=500)
    proc = run(
        "main.py",
        "alerts",
        "test",
        "--timeout",
        "20",
        home=tmp_path,
        extra_env={"ALERT_WEBHOOK_URL": httpserver.url_for("/hook")},
    )
    assert proc.returncode == 9
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [errors[0]] and "HTTP 500" in errors[0]
    assert "Traceback" not in proc.stderr


def test_close_all_delivers_what_is_pending_and_forgets_the_dispatchers(
    tmp_path, httpserver, monkeypatch
):
    httpserver.expect_request("/close_all", method="POST").respond_with_data("ok")
    monkeypatch.setenv("ALERT_WEBHOOK_URL", httpserver.url_for("/close_all"))
    first = ad.get_dispatcher(tmp_path)
    ad.send("HIGH", "test", "Pending at shutdown", "deliver me", home=tmp_path)

    assert ad.close_all(timeout_s=10)
    assert len(posted(httpserver, "/close_all")) == 1
    assert ad.get_dispatcher(tmp_path) is not first  # a fresh one after close
