"""The encrypted credential store: round trips, nothing readable on disk in any encoding, tamper
detection, file mode and atomic writes, nonce and salt freshness, no plaintext fallback without
`cryptography`, the `credentials` command, `lookup` and the master password rules."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import filelock
import pytest

import credential_manager as cm
from error_handling import CredentialError
from logging_config import known_secrets, redact
from tests.helpers import ROOT

PASSWORD = "correct horse battery staple"
OTHER_PASSWORD = "tr0ub4dor&3-but-longer"
#: A value that must never show up anywhere but in memory.
SENTINEL = "AKsentinel-7Qz9-Xv2L-0pR4-mN8w-SECRETVALUE"


@pytest.fixture
def store_path(tmp_path) -> Path:
    return tmp_path / "credentials.enc"


def new_store(path: Path, entries: dict[str, str], password: str = PASSWORD):
    store = cm.CredentialStore.open(path, password, create=True)
    for name, value in entries.items():
        store.set(name, value)
    return store


def document(path: Path) -> dict:
    return json.loads(path.read_text())


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- Round trip -----------------------------------------------------------------------------------
def test_values_survive_reopening_with_the_master_password(store_path):
    entries = {"ALPACA_API_KEY": "PKTEST123456", "ALPACA_SECRET_KEY": SENTINEL, "slack.token": "x"}
    new_store(store_path, entries)

    reopened = cm.CredentialStore.open(store_path, PASSWORD)
    assert {name: reopened.get(name) for name in entries} == entries


def test_names_are_sorted(store_path):
    new_store(store_path, {"b_key": "2", "A_KEY": "1", "a-key": "3"})
    assert cm.CredentialStore.open(store_path, PASSWORD).names() == ["A_KEY", "a-key", "b_key"]


def test_delete_removes_the_name_from_the_file(store_path):
    store = new_store(store_path, {"KEEP": "1", "DROP": "2"})
    store.delete("DROP")
    assert cm.CredentialStore.open(store_path, PASSWORD).names() == ["KEEP"]


def test_set_replaces_a_previous_value(store_path):
    new_store(store_path, {"KEY": "old-value"}).set("KEY", "new-value")
    assert cm.CredentialStore.open(store_path, PASSWORD).get("KEY") == "new-value"


def test_get_of_a_missing_name_says_how_to_see_the_names(store_path):
    store = new_store(store_path, {"KEY": "1"})
    with pytest.raises(CredentialError, match="credentials list"):
        store.get("OTHER")


def test_delete_of_a_missing_name_is_refused(store_path):
    store = new_store(store_path, {"KEY": "1"})
    with pytest.raises(CredentialError, match="no credential named 'OTHER'"):
        store.delete("OTHER")


@pytest.mark.parametrize("name", ["", "1KEY", "A KEY", "KEY\n", "K" * 65, "a/b", "ключ"])
def test_invalid_names_are_refused(store_path, name):
    store = cm.CredentialStore.open(store_path, PASSWORD, create=True)
    with pytest.raises(CredentialError, match="invalid credential name"):
        store.set(name, "value")
    assert not store_path.exists()


def test_an_empty_value_is_refused(store_path):
    store = cm.CredentialStore.open(store_path, PASSWORD, create=True)
    with pytest.raises(CredentialError, match="empty"):
        store.set("KEY", "")


def test_opening_a_missing_store_says_how_to_create_one(store_path):
    with pytest.raises(CredentialError, match=re.escape("`python main.py credentials set NAME`")):
        cm.CredentialStore.open(store_path, PASSWORD)


def test_create_writes_nothing_until_the_first_set(store_path):
    store = cm.CredentialStore.open(store_path, PASSWORD, create=True)
    assert store.names() == []
    assert not store_path.exists()
    store.set("KEY", "value")
    assert store_path.exists()


def test_a_new_store_never_overwrites_an_existing_file(store_path):
    new_store(store_path, {"KEY": "value"})
    before = store_path.read_bytes()
    with pytest.raises(CredentialError, match="already exists"):
        cm.CredentialStore(store_path, OTHER_PASSWORD).set("OTHER", "value")
    assert store_path.read_bytes() == before


# --- What is on disk ------------------------------------------------------------------------------
def encodings_of(text: str) -> list[bytes]:
    """`text` as it could appear in a file: UTF-8/16/32, hex, and base64 (standard and URL-safe)
    at each of the 3 alignments, as long interior runs that do not depend on neighbouring bytes."""
    raw = text.encode("utf-8")
    found = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    found += [text.encode(codec) for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for shift in range(3):
            encoded = encode(b"\0" * shift + raw)
            found.append(encoded[4:-4])  # drop the chars shared with the prefix and the padding
    assert all(len(variant) >= 16 for variant in found)
    return found


def test_the_file_holds_no_value_name_or_password_in_any_encoding(store_path):
    new_store(store_path, {"ALPACA_SECRET_KEY_LONG_NAME": SENTINEL})
    content = store_path.read_bytes()
    for text in (SENTINEL, PASSWORD, "ALPACA_SECRET_KEY_LONG_NAME"):
        for variant in encodings_of(text):
            assert variant not in content, (text, variant)


def test_the_file_is_versioned_json_with_an_scrypt_header(store_path):
    new_store(store_path, {"KEY": "value"})
    doc = document(store_path)
    assert set(doc) == {"version", "kdf", "kdf_params", "salt", "nonce", "ciphertext"}
    assert (doc["version"], doc["kdf"]) == (cm.STORE_VERSION, "scrypt")
    assert doc["kdf_params"] == {"n": 2**15, "r": 8, "p": 1, "length": 32}
    assert len(base64.b64decode(doc["salt"])) == 16
    assert len(base64.b64decode(doc["nonce"])) == 12


def test_the_file_is_mode_0600_after_create_and_every_write_even_with_umask_0(store_path):
    previous_umask = os.umask(0)
    try:
        store = new_store(store_path, {"A": "1"})
        assert mode_of(store_path) == 0o600
        store_path.chmod(0o644)  # someone loosened it: the next write tightens it again
        for write in (
            lambda: store.set("B", "2"),
            lambda: store.delete("A"),
            lambda: store.change_password(OTHER_PASSWORD),
        ):
            write()
            assert mode_of(store_path) == 0o600
    finally:
        os.umask(previous_umask)


def test_no_temp_file_is_left_behind_only_the_empty_0600_lock_file(store_path):
    store = new_store(store_path, {"A": "1", "B": "2"})
    store.delete("A")
    store.change_password(OTHER_PASSWORD)
    lock_file = store_path.with_name("credentials.enc.lock")
    assert sorted(p.name for p in store_path.parent.iterdir()) == [store_path.name, lock_file.name]
    assert (lock_file.read_bytes(), mode_of(lock_file)) == (b"", 0o600)


def test_every_write_uses_a_new_nonce_under_the_same_salt(store_path):
    store = new_store(store_path, {"A": "1"})
    headers = [document(store_path)]
    for value in ("2", "3"):
        store.set("A", value)
        headers.append(document(store_path))
    assert len({h["nonce"] for h in headers}) == 3
    assert len({h["salt"] for h in headers}) == 1


def test_change_password_uses_a_new_salt_and_only_the_new_password_opens(store_path):
    entries = {"ALPACA_API_KEY": "PKTEST123456", "ALPACA_SECRET_KEY": SENTINEL}
    store = new_store(store_path, entries)
    old_salt = document(store_path)["salt"]

    store.change_password(OTHER_PASSWORD)

    assert document(store_path)["salt"] != old_salt
    with pytest.raises(CredentialError, match="wrong master password"):
        cm.CredentialStore.open(store_path, PASSWORD)
    reopened = cm.CredentialStore.open(store_path, OTHER_PASSWORD)
    assert {name: reopened.get(name) for name in entries} == entries


# --- Tampering ------------------------------------------------------------------------------------
def test_a_wrong_password_cannot_open_the_store(store_path):
    new_store(store_path, {"KEY": SENTINEL})
    with pytest.raises(CredentialError) as caught:
        cm.CredentialStore.open(store_path, OTHER_PASSWORD)
    assert str(caught.value) == (
        f"cannot decrypt {store_path}: wrong master password or the file was modified"
    )


def flip_byte(doc: dict, field: str, index: int) -> None:
    data = bytearray(base64.b64decode(doc[field]))
    data[index] ^= 0x01
    doc[field] = base64.b64encode(bytes(data)).decode()


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda d: flip_byte(d, "ciphertext", 0), id="ciphertext-first-byte"),
        pytest.param(lambda d: flip_byte(d, "ciphertext", -1), id="ciphertext-tag"),
        pytest.param(lambda d: flip_byte(d, "nonce", 5), id="nonce"),
        pytest.param(lambda d: flip_byte(d, "salt", 7), id="salt"),
        pytest.param(lambda d: d["kdf_params"].update(n=2**14), id="kdf-n"),
        pytest.param(lambda d: d["kdf_params"].update(r=4), id="kdf-r"),
    ],
)
def test_a_modified_file_cannot_be_opened_and_stays_as_it_was(store_path, tamper):
    new_store(store_path, {"KEY": SENTINEL})
    doc = document(store_path)
    tamper(doc)
    store_path.write_text(json.dumps(doc))
    tampered = store_path.read_bytes()

    with pytest.raises(CredentialError, match="wrong master password or the file was modified"):
        cm.CredentialStore.open(store_path, PASSWORD)
    assert store_path.read_bytes() == tampered


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"PK\x03\x04 not json", id="not-json"),
        pytest.param(b"[1, 2]", id="json-list"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param({"version": 2}, id="future-version"),
        pytest.param({"kdf": "argon2id"}, id="unknown-kdf"),
        pytest.param({"kdf_params": {"n": 2**30, "r": 8, "p": 1, "length": 32}}, id="huge-n"),
        pytest.param({"salt": "not base64!"}, id="bad-base64"),
        pytest.param({"nonce": base64.b64encode(b"short").decode()}, id="short-nonce"),
    ],
)
def test_a_damaged_file_is_reported_in_one_line(store_path, content):
    new_store(store_path, {"KEY": "value"})
    if isinstance(content, dict):
        content = json.dumps({**document(store_path), **content}).encode()
    store_path.write_bytes(content)

    with pytest.raises(CredentialError, match="is not a credential store or is damaged") as caught:
        cm.CredentialStore.open(store_path, PASSWORD)
    assert "\n" not in str(caught.value)


# --- Without cryptography -------------------------------------------------------------------------
BLOCK_CRYPTOGRAPHY = """\
import sys

class BlockCryptography:
    def find_spec(self, name, path=None, target=None):
        if name == "cryptography" or name.startswith("cryptography."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, BlockCryptography())
"""


def run_python(code: str, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_cryptography_the_store_refuses_and_writes_nothing(store_path):
    code = BLOCK_CRYPTOGRAPHY + textwrap.dedent(
        """\
        import credential_manager as cm
        from error_handling import CredentialError
        try:
            store = cm.CredentialStore.open(sys.argv[1], "a long master password", create=True)
            store.set("ALPACA_API_KEY", "value-that-must-not-be-written")
        except CredentialError as exc:
            print(f"CredentialError: {exc}")
        """
    )
    proc = run_python(code, str(store_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("CredentialError: the credential store needs the `cryptography`")
    assert not store_path.exists()


def test_importing_the_module_loads_neither_cryptography_nor_pandas():
    code = (
        "import sys, credential_manager\n"
        "print(sorted({'cryptography', 'pandas'} & {m.split('.')[0] for m in sys.modules}))"
    )
    proc = run_python(code)
    assert proc.stdout.strip() == "[]", proc.stderr


# --- The `credentials` command --------------------------------------------------------------------
def cli(*args: str, home: Path, password: str | None = PASSWORD, stdin: str = "", **env: str):
    """`python main.py credentials *args` as a user runs it, with stdin a pipe (not a terminal)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in (cm.ENV_MASTER_PASSWORD, cm.ENV_NEW_MASTER_PASSWORD, "ALPACA_API_KEY")
    }
    clean.update({"TRADING_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1", **env})
    if password is not None:
        clean[cm.ENV_MASTER_PASSWORD] = password
    return subprocess.run(
        [sys.executable, "main.py", "credentials", *args],
        cwd=ROOT,
        env=clean,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def files_containing(home: Path, text: str) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_cli_set_reads_the_value_from_stdin_and_list_shows_only_the_name(tmp_path):
    stored = cli("set", "ALPACA_API_KEY", home=tmp_path, stdin=SENTINEL + "\n")
    listed = cli("list", home=tmp_path)

    store_file = tmp_path / "credentials.enc"
    assert stored.returncode == 0, stored.stderr
    assert stored.stdout.strip() == f"stored ALPACA_API_KEY in {store_file}"
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["ALPACA_API_KEY"]
    assert cm.CredentialStore.open(store_file, PASSWORD).get("ALPACA_API_KEY") == SENTINEL
    assert mode_of(store_file) == 0o600


def test_cli_output_and_logs_never_show_the_value(tmp_path):
    procs = [
        cli("set", "ALPACA_API_KEY", home=tmp_path, stdin=SENTINEL + "\n"),
        cli("list", home=tmp_path, LOG_LEVEL="DEBUG"),
        cli("delete", "ALPACA_API_KEY", "--debug", home=tmp_path),
    ]
    for proc in procs:
        assert proc.returncode == 0, proc.stderr
        assert SENTINEL not in proc.stdout + proc.stderr
    assert (tmp_path / "logs").is_dir()
    assert files_containing(tmp_path, SENTINEL) == []


def test_cli_delete_removes_the_name(tmp_path):
    new_store(tmp_path / "credentials.enc", {"ALPACA_API_KEY": "1", "OTHER": "2"})
    deleted = cli("delete", "ALPACA_API_KEY", home=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == "deleted ALPACA_API_KEY"
    assert cli("list", home=tmp_path).stdout.splitlines() == ["OTHER"]


def test_cli_list_without_a_store_says_none_are_stored(tmp_path):
    proc = cli("list", home=tmp_path, password=None)
    assert (proc.returncode, proc.stdout.strip()) == (0, "(no credentials stored)")


def test_cli_wrong_master_password_is_a_one_line_error_with_exit_code_8(tmp_path):
    new_store(tmp_path / "credentials.enc", {"ALPACA_API_KEY": SENTINEL})
    proc = cli("list", home=tmp_path, password=OTHER_PASSWORD)
    assert proc.returncode == 8
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: cannot decrypt ")
    assert "wrong master password" in line
    assert "Traceback" not in proc.stderr


def test_cli_without_a_password_or_terminal_says_how_to_give_one(tmp_path):
    proc = cli("set", "ALPACA_API_KEY", home=tmp_path, password=None, stdin="value\n")
    assert proc.returncode == 8
    assert proc.stderr.startswith("error: no master password: set TRADING_MASTER_PASSWORD")
    assert not (tmp_path / "credentials.enc").exists()


def test_cli_refuses_a_short_master_password_when_creating_the_store(tmp_path):
    proc = cli("set", "ALPACA_API_KEY", home=tmp_path, password="short", stdin="value\n")
    assert proc.returncode == 8
    assert "at least 12" in proc.stderr
    assert not (tmp_path / "credentials.enc").exists()


def test_cli_refuses_an_empty_value_on_stdin(tmp_path):
    proc = cli("set", "ALPACA_API_KEY", home=tmp_path, stdin="")
    assert proc.returncode == 8
    assert "no value for ALPACA_API_KEY" in proc.stderr
    assert not (tmp_path / "credentials.enc").exists()


def test_cli_never_takes_a_value_from_the_command_line(tmp_path):
    proc = cli("set", "ALPACA_API_KEY", SENTINEL, home=tmp_path)
    assert proc.returncode == 2
    assert not (tmp_path / "credentials.enc").exists()


@pytest.mark.parametrize("action", ["set", "delete"])
def test_cli_set_and_delete_without_a_name_are_usage_errors(tmp_path, action):
    proc = cli(action, home=tmp_path)
    assert proc.returncode == 2
    assert "needs a NAME" in proc.stderr


def test_cli_offers_no_get(tmp_path):
    proc = cli("get", "ALPACA_API_KEY", home=tmp_path)
    assert proc.returncode == 2
    assert "invalid choice: 'get'" in proc.stderr


def test_cli_change_password_takes_the_new_one_from_the_environment(tmp_path):
    store_file = tmp_path / "credentials.enc"
    new_store(store_file, {"ALPACA_API_KEY": SENTINEL})
    proc = cli("change-password", home=tmp_path, TRADING_NEW_MASTER_PASSWORD=OTHER_PASSWORD)
    assert proc.returncode == 0, proc.stderr
    assert "update it" in proc.stdout
    assert cm.CredentialStore.open(store_file, OTHER_PASSWORD).get("ALPACA_API_KEY") == SENTINEL


def test_cli_without_cryptography_exits_8_and_writes_nothing(tmp_path):
    code = BLOCK_CRYPTOGRAPHY + textwrap.dedent(
        """\
        import runpy
        sys.argv = ["main.py", "credentials", "set", "ALPACA_API_KEY"]
        runpy.run_path("main.py", run_name="__main__")
        """
    )
    env = {**os.environ, "TRADING_HOME": str(tmp_path), cm.ENV_MASTER_PASSWORD: PASSWORD}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        input="value\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 8
    assert proc.stderr.startswith("error: the credential store needs the `cryptography` package")
    assert not (tmp_path / "credentials.enc").exists()


# --- lookup ---------------------------------------------------------------------------------------
def test_lookup_prefers_the_environment_variable(tmp_path):
    new_store(tmp_path / "credentials.enc", {"ALPACA_API_KEY": "from-store"})
    environ = {"ALPACA_API_KEY": "from-env", cm.ENV_MASTER_PASSWORD: PASSWORD}
    assert cm.lookup("ALPACA_API_KEY", home=tmp_path, environ=environ) == "from-env"


def test_lookup_reads_the_store_when_the_master_password_is_set(tmp_path):
    new_store(tmp_path / "credentials.enc", {"ALPACA_API_KEY": "from-store"})
    environ = {cm.ENV_MASTER_PASSWORD: PASSWORD}
    assert cm.lookup("ALPACA_API_KEY", home=tmp_path, environ=environ) == "from-store"
    assert cm.lookup("ABSENT_KEY", home=tmp_path, environ=environ) is None


def test_lookup_is_none_without_a_store_or_without_the_master_password(tmp_path):
    environ = {cm.ENV_MASTER_PASSWORD: PASSWORD}
    assert cm.lookup("ALPACA_API_KEY", home=tmp_path, environ=environ) is None
    new_store(tmp_path / "credentials.enc", {"ALPACA_API_KEY": "from-store"})
    assert cm.lookup("ALPACA_API_KEY", home=tmp_path, environ={}) is None


def test_lookup_with_a_wrong_master_password_raises_instead_of_answering_none(tmp_path):
    new_store(tmp_path / "credentials.enc", {"ALPACA_API_KEY": "from-store"})
    with pytest.raises(CredentialError, match="wrong master password"):
        cm.lookup("ALPACA_API_KEY", home=tmp_path, environ={cm.ENV_MASTER_PASSWORD: "nope" * 4})


def test_decrypted_values_and_the_password_are_redacted_from_logs(store_path):
    new_store(store_path, {"KEY": SENTINEL})
    cm.CredentialStore.open(store_path, PASSWORD)
    line = redact(f"connected with {SENTINEL} using {PASSWORD}", known_secrets())
    assert SENTINEL not in line
    assert PASSWORD not in line


# --- master_password ------------------------------------------------------------------------------
class Terminal:
    """A stdin that is a TTY."""

    def isatty(self) -> bool:
        return True


class Pipe:
    def isatty(self) -> bool:
        return False


class Answers:
    """A `prompt` that returns `replies` in order and records the prompts it was shown."""

    def __init__(self, *replies: str) -> None:
        self.pending = list(replies)
        self.shown: list[str] = []

    def __call__(self, text: str) -> str:
        self.shown.append(text)
        return self.pending.pop(0)


def never_prompt(text: str) -> str:
    raise AssertionError(f"prompted: {text}")


def test_master_password_comes_from_the_environment_without_prompting():
    environ = {cm.ENV_MASTER_PASSWORD: PASSWORD}
    got = cm.master_password(environ=environ, stdin=Terminal(), prompt=never_prompt)
    assert got == PASSWORD


def test_master_password_without_environment_or_terminal_is_refused():
    with pytest.raises(CredentialError, match="set TRADING_MASTER_PASSWORD or run in a terminal"):
        cm.master_password(environ={}, stdin=Pipe(), prompt=never_prompt)


def test_master_password_is_asked_at_a_terminal_when_the_variable_is_empty():
    prompt = Answers(PASSWORD)
    got = cm.master_password(environ={cm.ENV_MASTER_PASSWORD: ""}, stdin=Terminal(), prompt=prompt)
    assert got == PASSWORD
    assert len(prompt.shown) == 1


def test_a_new_master_password_is_asked_twice_and_must_match():
    prompt = Answers(PASSWORD, PASSWORD + "x")
    with pytest.raises(CredentialError, match="differ"):
        cm.master_password(confirm=True, environ={}, stdin=Terminal(), prompt=prompt)


def test_a_new_master_password_confirmed_twice_is_returned():
    prompt = Answers(PASSWORD, PASSWORD)
    got = cm.master_password(confirm=True, environ={}, stdin=Terminal(), prompt=prompt)
    assert got == PASSWORD
    assert len(prompt.shown) == 2


@pytest.mark.parametrize("source", ["prompt", "environment"])
def test_a_new_master_password_shorter_than_12_characters_is_refused(source):
    short = "elevenchars"
    environ = {cm.ENV_MASTER_PASSWORD: short} if source == "environment" else {}
    with pytest.raises(CredentialError, match="at least 12"):
        cm.master_password(
            confirm=True, environ=environ, stdin=Terminal(), prompt=Answers(short, short)
        )


# --- Concurrent writers ---------------------------------------------------------------------------
#: `python main.py credentials set NAME` with its imports done before it waits at a barrier (a
#: file that appears), so that all writers reach the store at the same instant.
BARRIER_WRITER = """\
import os, runpy, sys, time
import credential_manager, main  # the slow part, done before the barrier
barrier, name = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 60
while not os.path.exists(barrier):
    if time.monotonic() > deadline:
        sys.exit("the barrier never opened")
    time.sleep(0.001)
sys.argv = ["main.py", "credentials", "set", name]
runpy.run_path("main.py", run_name="__main__")
"""
WRITERS = 8


@pytest.mark.parametrize("existing", [True, False], ids=["existing-store", "creating-the-store"])
def test_writers_started_at_once_all_keep_their_entries(tmp_path, existing):
    store_file = tmp_path / "credentials.enc"
    if existing:
        new_store(store_file, {"ALREADY_THERE": "old"})
    env = {k: v for k, v in os.environ.items() if k != cm.ENV_NEW_MASTER_PASSWORD}
    env.update({"TRADING_HOME": str(tmp_path), cm.ENV_MASTER_PASSWORD: PASSWORD})
    barrier = tmp_path / "go"
    expected = {f"KEY_{i}": f"value-{i}-{SENTINEL}" for i in range(WRITERS)}
    procs = []
    for name, value in expected.items():
        value_file = tmp_path / f"{name}.in"
        value_file.write_text(value + "\n")
        with value_file.open() as stdin:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", BARRIER_WRITER, str(barrier), name],
                    cwd=ROOT,
                    env=env,
                    stdin=stdin,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
    barrier.touch()
    results = [proc.communicate(timeout=120) for proc in procs]

    assert [p.returncode for p in procs] == [0] * WRITERS, [err for _, err in results]
    if existing:
        expected["ALREADY_THERE"] = "old"
    store = cm.CredentialStore.open(store_file, PASSWORD)
    assert {name: store.get(name) for name in store.names()} == expected


def test_a_change_keeps_what_another_store_object_wrote_since_it_was_opened(store_path):
    new_store(store_path, {"KEEP": "1", "DROP": "2"})
    first = cm.CredentialStore.open(store_path, PASSWORD)
    second = cm.CredentialStore.open(store_path, PASSWORD)
    first.set("FIRST", "a")
    second.set("SECOND", "b")
    first.delete("DROP")
    reopened = cm.CredentialStore.open(store_path, PASSWORD)
    assert {n: reopened.get(n) for n in reopened.names()} == {
        "FIRST": "a",
        "KEEP": "1",
        "SECOND": "b",
    }


def test_a_new_store_joins_one_created_meanwhile_with_the_same_password(store_path):
    late = cm.CredentialStore.open(store_path, PASSWORD, create=True)
    new_store(store_path, {"EARLY": "1"})
    late.set("LATE", "2")
    assert cm.CredentialStore.open(store_path, PASSWORD).names() == ["EARLY", "LATE"]


def test_a_change_after_another_process_changed_the_password_is_refused(store_path):
    stale = new_store(store_path, {"KEY": "1"})
    cm.CredentialStore.open(store_path, PASSWORD).change_password(OTHER_PASSWORD)
    before = store_path.read_bytes()
    with pytest.raises(CredentialError, match="wrong master password"):
        stale.set("OTHER", "2")
    assert store_path.read_bytes() == before


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: s.set("KEY", "new"), id="set"),
        pytest.param(lambda s: s.delete("KEY"), id="delete"),
        pytest.param(lambda s: s.change_password(OTHER_PASSWORD), id="change-password"),
    ],
)
def test_a_held_lock_makes_a_change_fail_within_the_timeout_naming_the_lock_file(
    store_path, change
):
    new_store(store_path, {"KEY": "old"})
    before = store_path.read_bytes()
    store = cm.CredentialStore.open(store_path, PASSWORD, lock_timeout_s=0.3)
    lock_file = store_path.with_name("credentials.enc.lock")
    assert store.lock_path == lock_file

    with filelock.FileLock(lock_file):
        started = time.monotonic()
        with pytest.raises(CredentialError) as caught:
            change(store)
        waited_s = time.monotonic() - started

    assert 0.3 <= waited_s < 5
    message = str(caught.value)
    assert message.startswith(f"could not lock {lock_file} within 0.3 s: another process is")
    assert "\n" not in message
    assert store_path.read_bytes() == before
    change(store)  # the lock released, the same change goes through
    assert store_path.read_bytes() != before
