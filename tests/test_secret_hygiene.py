"""A secret sentinel set as the broker API key, the webhook token and signing secret, the master
password and a stored credential never appears in any log, alert, output or error of full command
runs: grep every file under TRADING_HOME/logs and everything printed."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

SENTINELS = {
    "api_key": "SENTINELkey7f3a9c2e1b",
    "secret_key": "SENTINELsecret5d8e2a4c",
    "webhook_token": "SENTINELhook9b1c7e3f5a",
    "webhook_secret": "SENTINELsign2e6a8c4b0d",
    "master_password": "SENTINELmaster4c1e9a7b3",
    "stored": "SENTINELstored8a2d6f0c4e",
}


def _encodings(secret: str) -> list[str]:
    raw = secret.encode()
    return [secret, raw.hex(), base64.b64encode(raw).decode().rstrip("=")]


def test_no_secret_reaches_logs_alerts_or_output_of_a_full_command_run(tmp_path, httpserver):
    # The receiver plays a hostile service: it echoes whatever key it was sent in its error.
    def echo_key(request):
        from werkzeug import Response

        key = request.headers.get("APCA-API-KEY-ID", "")
        return Response(json.dumps({"message": f"forbidden: key {key} not allowed"}), 403)

    httpserver.expect_request("/v2/stocks/bars").respond_with_handler(echo_key)
    hook_path = f"/hooks/{SENTINELS['webhook_token']}"
    httpserver.expect_request(hook_path, method="POST").respond_with_data("ok")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TICKER_LONG", "TICKER_SHORT", "DATA_SOURCE")
    }
    env.update(
        {
            "TRADING_HOME": str(tmp_path),
            "PYTHONDONTWRITEBYTECODE": "1",
            "ALPACA_API_KEY": SENTINELS["api_key"],
            "ALPACA_SECRET_KEY": SENTINELS["secret_key"],
            "ALPACA_DATA_URL": httpserver.url_for("/"),
            "ALERT_WEBHOOK_URL": httpserver.url_for(hook_path),
            "ALERT_WEBHOOK_SECRET": SENTINELS["webhook_secret"],
            "TRADING_MASTER_PASSWORD": SENTINELS["master_password"],
        }
    )

    def main(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "main.py", *args],
            cwd=ROOT,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    runs = [
        main("alerts", "test", "--severity", "CRITICAL"),
        main("process", "--source", "alpaca", "--start", "2024-01-02"),
        main("credentials", "set", "BROKER_TOKEN", stdin=SENTINELS["stored"] + "\n"),
        main("credentials", "list"),
        main("--debug", "process", "--source", "alpaca", "--start", "2024-01-02"),
    ]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[1].returncode == 2 and "rejected the API keys" in runs[1].stderr
    assert runs[2].returncode == 0, runs[2].stderr
    assert "BROKER_TOKEN" in runs[3].stdout

    texts = {
        f"run {i} {stream}": getattr(r, stream)
        for i, r in enumerate(runs)
        for stream in ("stdout", "stderr")
    }
    logs = list(Path(tmp_path, "logs").rglob("*"))
    assert any(p.name == "alerts.log" for p in logs) and any(p.name == "trading.log" for p in logs)
    texts.update({str(p): p.read_text(errors="replace") for p in logs if p.is_file()})
    # What the webhook received must not carry them either (the URL token is the receiver's own).
    texts["webhook body"] = "".join(
        r.get_data(as_text=True) for r, _ in httpserver.log if r.path == hook_path
    )
    assert texts["webhook body"]  # it was delivered
    leaks = [
        (where, name)
        for where, text in texts.items()
        for name, secret in SENTINELS.items()
        for form in _encodings(secret)
        if form in text
    ]
    assert leaks == []
    # The hostile server really did echo the key, so redaction had work to do.
    assert any(
        SENTINELS["api_key"] in response.get_data(as_text=True)
        for request, response in httpserver.log
        if request.path == "/v2/stocks/bars"
    )
