"""The config table: every key checked at init_app, the same checks in check_config without
side effects, unknown keys warned about, and a store folder that never publishes the app."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from async_store import NotConfiguredError, Store
from async_store.cli import main
from async_store.config import SETTINGS, StoreConfigWarning
from tests.conftest import make_app

ROOT = Path(__file__).resolve().parent.parent
S3 = {"STORE_PROVIDER": "s3", "STORE_S3_BUCKET": "b"}


# --- 1: the store folder is never the app's own ---------------------------------------------


@pytest.mark.parametrize("kind", ["quart", "flask"])
@pytest.mark.parametrize("empty", ["", "   "])
def test_an_empty_store_path_is_refused(tmp_path: Path, kind: str, empty: str) -> None:
    # os.environ.get("UPLOAD_DIR", "") once made the store the app's root folder: the route
    # then served app.py and the database.
    app = make_app(kind, None, STORE_PATH=empty)
    with pytest.raises(NotConfiguredError, match="STORE_PATH is empty"):
        Store(app)
    assert "store" not in app.extensions


def app_with_folders(kind: str, tmp_path: Path, **config: Any) -> Any:
    import flask
    import quart

    factory = quart.Quart if kind == "quart" else flask.Flask
    app = factory(
        "myapp", root_path=str(tmp_path / "app"), instance_path=str(tmp_path / "app" / "inst")
    )
    app.config.update(config)
    return app


@pytest.mark.parametrize("kind", ["quart", "flask"])
@pytest.mark.parametrize(
    ("store_path", "named"),
    [
        ("app", "root folder"),  # STORE_PATH = "." (relative to the root) is the same
        (".", "root folder"),
        ("app/inst", "instance folder"),
        ("", None),  # tmp_path itself: holds the root folder
    ],
)
def test_a_store_that_would_publish_the_app_is_refused(
    tmp_path: Path, kind: str, store_path: str, named: str | None
) -> None:
    (tmp_path / "app" / "inst").mkdir(parents=True)
    path = str(tmp_path / store_path) if store_path != "." else "."
    app = app_with_folders(kind, tmp_path, STORE_PATH=path)
    with pytest.raises(NotConfiguredError, match=r"STORE_PATH .* (is|holds) the app's") as info:
        Store(app)
    if named:
        assert named in str(info.value)
    assert "STORE_SERVE_FILES = False" in str(info.value)
    # Served some other way, such a folder is the app's choice.
    app = app_with_folders(kind, tmp_path, STORE_PATH=path, STORE_SERVE_FILES=False)
    Store(app).close()


def test_a_store_holding_the_current_directory_is_refused(tmp_path: Path) -> None:
    app = app_with_folders("flask", tmp_path, STORE_PATH=os.path.dirname(os.getcwd()))
    with pytest.raises(NotConfiguredError, match="holds the current directory"):
        Store(app)
    app = app_with_folders("flask", tmp_path, STORE_PATH="/")
    with pytest.raises(NotConfiguredError, match="STORE_PATH '/' holds"):
        Store(app)


def test_a_store_below_the_app_is_fine(tmp_path: Path) -> None:
    app = app_with_folders("flask", tmp_path, STORE_PATH="media/uploads")
    store = Store(app)
    assert store.state(app).config.path == str(tmp_path / "app" / "media" / "uploads")
    store.close()


# --- 15: every key is checked, naming its value and what is allowed ---------------------------


@pytest.mark.parametrize(
    ("config", "key", "allowed"),
    [
        ({**S3, "STORE_S3_MAX_ATTEMPTS": "five"}, "STORE_S3_MAX_ATTEMPTS", "whole number"),
        ({"STORE_BACKGROUND_CONCURRENCY": "4 workers"}, "STORE_BACKGROUND_CONCURRENCY", "whole"),
        ({"STORE_BACKGROUND_DRAIN_TIMEOUT": "soon"}, "STORE_BACKGROUND_DRAIN_TIMEOUT", "seconds"),
        ({**S3, "STORE_S3_CONNECT_TIMEOUT": "ten"}, "STORE_S3_CONNECT_TIMEOUT", "seconds"),
        ({**S3, "STORE_S3_READ_TIMEOUT": -1}, "STORE_S3_READ_TIMEOUT", "more than zero"),
        ({**S3, "STORE_S3_CONNECT_TIMEOUT": 0}, "STORE_S3_CONNECT_TIMEOUT", "more than zero"),
        ({"STORE_BACKGROUND_CONCURRENCY": 0}, "STORE_BACKGROUND_CONCURRENCY", "at least 1"),
        ({"STORE_BACKGROUND_RETRIES": 0}, "STORE_BACKGROUND_RETRIES", "at least 1"),
        ({"STORE_BACKGROUND_BACKOFF": -0.5}, "STORE_BACKGROUND_BACKOFF", "zero or more"),
        ({"STORE_BACKGROUND_MAX_BACKOFF": 0}, "STORE_BACKGROUND_MAX_BACKOFF", "more than zero"),
        ({"STORE_BACKGROUND": "sometimes"}, "STORE_BACKGROUND", "True or False"),
        ({"STORE_FSYNC": 2}, "STORE_FSYNC", "True or False"),
        ({"STORE_SERVE_FILES": None}, "STORE_SERVE_FILES", "True or False"),
        ({"STORE_MAX_CONTENT_LENGTH": "big"}, "STORE_MAX_CONTENT_LENGTH", "whole number"),
        ({**S3, "STORE_S3_ADDRESSING_STYLE": "pathy"}, "STORE_S3_ADDRESSING_STYLE", "'path'"),
        ({**S3, "STORE_S3_CONDITIONAL_WRITES": "maybe"}, "STORE_S3_CONDITIONAL_WRITES", "True"),
        ({**S3, "STORE_S3_MAX_MEMORY": 1.5}, "STORE_S3_MAX_MEMORY", "whole number"),
        ({**S3, "STORE_S3_PART_SIZE": 1024}, "STORE_S3_PART_SIZE", "5 MiB"),
        ({**S3, "STORE_S3_BUCKET": 42}, "STORE_S3_BUCKET", "non-empty string"),
        ({**S3, "STORE_S3_REGION": 1}, "STORE_S3_REGION", "non-empty string"),
    ],
)
@pytest.mark.parametrize("kind", ["quart", "flask"])
def test_every_key_is_checked_at_init(
    store_path: Path, kind: str, config: dict[str, Any], key: str, allowed: str
) -> None:
    app = make_app(kind, store_path, **config)
    with pytest.raises(NotConfiguredError) as info:
        Store(app)
    message = str(info.value)
    assert message.startswith(key) and repr(config[key]) in message and allowed in message
    assert "store" not in app.extensions


def test_values_given_as_text_are_taken_for_what_they_say(store_path: Path) -> None:
    # os.environ.get("STORE_BACKGROUND_RETRIES", "3") is a str: "3" means 3, "false" False.
    app = make_app(
        "flask",
        store_path,
        STORE_BACKGROUND_RETRIES="3",
        STORE_BACKGROUND_BACKOFF="0.25",
        STORE_FSYNC="false",
        STORE_SERVE_FILES="yes",
    )
    store = Store(app)
    config = store.state(app).config
    assert config["STORE_BACKGROUND_RETRIES"] == 3
    assert config["STORE_BACKGROUND_BACKOFF"] == 0.25
    assert config["STORE_FSYNC"] is False and config["STORE_SERVE_FILES"] is True
    store.close()


# --- 16: check_config checks exactly what init_app does, and changes nothing ---------------------


@pytest.mark.parametrize(
    "config",
    [
        {},  # a local app without STORE_PATH: init_app defaults it
        {**S3, "STORE_S3_ENDPOINT_URL": "http://127.0.0.1:1"},  # no STORE_S3_ACL given
        {"STORE_PROVIDER": "flask_store.providers.s3.S3GeventProvider", "STORE_S3_BUCKET": "b"},
    ],
)
@pytest.mark.parametrize("kind", ["quart", "flask"])
def test_check_config_accepts_what_init_app_accepts_and_changes_nothing(
    tmp_path: Path, kind: str, config: dict[str, Any]
) -> None:
    app = app_with_folders(kind, tmp_path, **config)
    before = dict(app.config)
    Store().check_config(app)
    assert dict(app.config) == before
    assert not (tmp_path / "app").exists()  # no uploads folder, no spool, no instance folder
    Store(app).close()


@pytest.mark.parametrize(
    "config",
    [
        {"STORE_PATH": ""},
        {"STORE_CHUNK_SIZE": 10},
        {**S3, "STORE_S3_ACL": "everyone"},
        {**S3, "STORE_S3_ACCESS_KEY": "a"},
        {"STORE_PROVIDER": "s3"},
        {"STORE_BACKGROUND_RETRIES": "x"},
    ],
)
def test_check_config_refuses_what_init_app_refuses(tmp_path: Path, config: dict[str, Any]) -> None:
    app = app_with_folders("flask", tmp_path, **config)
    with pytest.raises(NotConfiguredError) as checked:
        Store().check_config(app)
    with pytest.raises(NotConfiguredError) as initialised:
        Store(app)
    assert str(checked.value) == str(initialised.value)


# --- 17: unknown keys are warned about; read-only commands never create the store --------------


@pytest.mark.parametrize(
    ("config", "typo", "meant"),
    [
        ({"STORE_PTH": "/srv/media"}, "STORE_PTH", "STORE_PATH"),
        ({**S3, "STORE_S3_BUKET": "b2"}, "STORE_S3_BUKET", "STORE_S3_BUCKET"),
        ({"STORE_BACKGROUND_RETRY": 3}, "STORE_BACKGROUND_RETRY", "STORE_BACKGROUND_RETRIES"),
    ],
)
def test_an_unknown_key_is_a_warning_naming_the_closest(
    store_path: Path, config: dict[str, Any], typo: str, meant: str
) -> None:
    app = make_app("quart", store_path, **config)
    warning = rf"unknown config key {typo}: did you mean {meant}\?"
    with pytest.warns(StoreConfigWarning, match=warning):
        Store(app)


def test_a_custom_providers_own_keys_are_known(store_path: Path) -> None:
    app = make_app(
        "quart",
        store_path,
        STORE_PROVIDER="tests.test_extension.BucketProvider",
        STORE_FOO_BUCKET="b",
    )
    Store(app)  # filterwarnings = error: a warning would fail this


def test_the_store_folder_is_made_by_the_first_save_not_at_init(tmp_path: Path) -> None:
    app = make_app("flask", tmp_path / "a" / "b" / "c")
    store = Store(app)
    assert not (tmp_path / "a").exists()
    with app.app_context():
        store.Provider(b"x", filename="f.txt").save()
    assert (tmp_path / "a" / "b" / "c" / "f.txt").read_bytes() == b"x"
    store.close()


@pytest.mark.parametrize("kind", ["quart", "flask"])
def test_ls_of_a_mistyped_store_path_creates_nothing_and_says_so(tmp_path: Path, kind: str) -> None:
    typo = tmp_path / "medai"
    app = make_app(kind, typo)
    Store(app)
    result = app.test_cli_runner().invoke(args=["store", "ls"])
    assert result.exit_code == 1
    assert f"STORE_PATH {str(typo)!r} does not exist" in result.output
    assert not typo.exists()
    env = {k: None for k in os.environ if k.startswith("STORE_")} | {"STORE_PATH": str(typo)}
    result = CliRunner().invoke(main, ["ls"], env=env)
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not typo.exists()


# --- 19: a store path that is a file -----------------------------------------------------------


def test_a_store_path_that_is_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotConfiguredError, match=r"STORE_PATH '.*/file' is a file, not a folder"):
        Store(make_app("flask", tmp_path / "file"))
    with pytest.raises(NotConfiguredError, match=r"is below the file '.*/file', not a folder"):
        Store(make_app("flask", tmp_path / "file" / "below"))


# --- the table and the README say the same -----------------------------------------------------


def test_every_key_of_the_table_is_in_the_readme_and_back() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(STORE_[A-Z0-9_]+)`", readme, flags=re.M))
    documented |= set(re.findall(r"^\| `STORE_[A-Z0-9_]+`, `(STORE_[A-Z0-9_]+)`", readme, re.M))
    assert documented == {s.key for s in SETTINGS}
