"""The command line of an app with several storages: ``--storage NAME`` on every command,
``check`` and ``drain`` of every storage, ``migrate --to-storage NAME``, and
``STORE_STORAGES`` from the environment for ``python -m async_store``.

The app has its default storage on local disk, a second local one (``exports``), one in memory
(``mem``) and, where it matters, an S3 one (``documents``) on this module's SeaweedFS, which
refuses every key but the suite's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import Result

from async_store import Store
from async_store.exceptions import NotConfiguredError
from tests.conftest import make_app, s3_client, s3_config, save_undeliverable
from tests.seaweed import SeaweedFS, free_port
from tests.test_cli import FILES, bucket_files, fill, invoke, tree

STORAGES = ("default", "exports", "mem")


@pytest.fixture(scope="module")
def s3_server(signed_s3_server: SeaweedFS) -> SeaweedFS:
    return signed_s3_server


@pytest.fixture(scope="module")
def bucket(s3_server: SeaweedFS) -> str:
    """One bucket for the module, each test below a prefix of its own (a new bucket costs
    SeaweedFS seconds)."""
    s3_client(s3_server).create_bucket(Bucket="cli-storages")
    return "cli-storages"


def local_app(kind: str, tmp_path: Path, **more: Any) -> Any:
    """A ``kind`` app: default storage in tmp_path/default, ``exports`` in tmp_path/exports,
    ``mem`` in memory, and the storages ``more`` names."""
    (tmp_path / "default").mkdir(parents=True, exist_ok=True)
    (tmp_path / "exports").mkdir(exist_ok=True)
    storages = {"exports": {"PATH": str(tmp_path / "exports")}, "mem": {"PROVIDER": "memory"}}
    return make_app(kind, tmp_path / "default", STORE_STORAGES={**storages, **more})


def cli(app: Any, *args: str) -> Result:
    """``flask store ARGS`` / ``quart store ARGS`` in this process."""
    result: Result = app.test_cli_runner().invoke(args=["store", *args])
    return result


def listed(result: Result) -> list[str]:
    """The paths an ``ls`` printed (not its count line)."""
    assert result.exit_code == 0, result.output
    return [line.split()[-1] for line in result.output.splitlines()[:-1]]


STEPS = {"config", "reach", "write", "read", "delete", "spool"}


def blocks(result: Result) -> dict[str, list[list[str]]]:
    """A check's steps by storage: ``[step, status]`` for each line that names a step."""
    found: dict[str, list[list[str]]] = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in STEPS:
            found.setdefault(parts[0], []).append(parts[1:3])
    return found


PROBE = [["config", "ok"], ["reach", "ok"], ["write", "ok"], ["read", "ok"], ["delete", "ok"]]


# --- ls -----------------------------------------------------------------------------------------


def test_ls_of_each_storage(app_kind: str, tmp_path: Path) -> None:
    fill(tmp_path / "default", {"a.txt": b"a", "avatars/me.jpg": b"me"})
    fill(tmp_path / "exports", {"report.csv": b"1,2\n", "2024/old.csv": b"0\n"})
    app = local_app(app_kind, tmp_path)
    store = Store(app)
    memory = store.state(app, "mem").provider_class
    anyio.run(memory(b"in memory", filename="m.txt").save)

    assert listed(cli(app, "ls")) == ["a.txt", "avatars/me.jpg"]
    assert listed(cli(app, "ls", "--storage", "default")) == ["a.txt", "avatars/me.jpg"]
    assert listed(cli(app, "ls", "--storage", "exports")) == ["2024/old.csv", "report.csv"]
    assert listed(cli(app, "ls", "2024/", "--storage", "exports")) == ["2024/old.csv"]
    assert listed(cli(app, "ls", "--storage", "mem")) == ["m.txt"]


def test_ls_of_a_storage_never_written_to(tmp_path: Path) -> None:
    exports = {"PATH": str(tmp_path / "no")}
    app = make_app("flask", tmp_path / "default", STORE_STORAGES={"exports": exports})
    Store(app)
    result = cli(app, "ls", "--storage", "exports")
    assert result.exit_code == 1
    assert f"STORE_STORAGES['exports']: PATH {str(tmp_path / 'no')!r} does not exist" in (
        result.output
    )
    assert "or PATH is mistyped" in result.output and not (tmp_path / "no").exists()


def test_ls_of_an_s3_storage(tmp_path: Path, s3_server: SeaweedFS, bucket: str) -> None:
    client = s3_client(s3_server)
    for relative, data in FILES.items():
        client.put_object(Bucket=bucket, Key=f"ls/{relative}", Body=data)
    app = local_app("quart", tmp_path, documents=s3_config(s3_server, bucket, STORE_PATH="ls"))
    Store(app)
    assert listed(cli(app, "ls", "--storage", "documents")) == sorted(FILES)
    assert listed(cli(app, "ls")) == []


# --- an unknown storage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["ls", "--storage", "nope"],
        ["check", "--storage", "nope"],
        ["drain", "--storage", "nope"],
        ["migrate", "--storage", "nope", "--to-storage", "exports"],
        ["migrate", "--to-storage", "nope"],
    ],
    ids=["ls", "check", "drain", "migrate-from", "migrate-to"],
)
def test_an_unknown_storage_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    app = local_app("flask", tmp_path)
    Store(app)
    result = cli(app, *args)
    assert result.exit_code == 2, result.output
    option = "--to-storage" if "--to-storage" in args and args[-1] == "nope" else "--storage"
    assert f"Invalid value for {option}: no storage named 'nope'" in result.output
    assert "this app has 'default', 'exports', 'mem'" in result.output


# --- check --------------------------------------------------------------------------------------


def test_check_every_storage_then_one(app_kind: str, tmp_path: Path) -> None:
    app = local_app(app_kind, tmp_path)
    Store(app)
    result = cli(app, "check")
    assert result.exit_code == 0, result.output
    assert blocks(result) == dict.fromkeys(STORAGES, PROBE)
    assert f"exports  config   ok      LocalProvider: PATH {str(tmp_path / 'exports')!r}" in (
        result.output
    )  # the storage's own key, as STORE_STORAGES names it
    assert "default  config   ok      LocalProvider: STORE_PATH" in result.output
    assert result.output.endswith("all checks passed\n")
    assert tree(tmp_path) == {}  # every probe is gone

    one = cli(app, "check", "--storage", "exports")
    assert one.exit_code == 0, one.output
    assert blocks(one) == {"exports": PROBE}
    assert one.output.splitlines()[0].startswith("exports  config   ok")


def test_check_reports_each_storage_and_fails_for_one(
    tmp_path: Path, s3_server: SeaweedFS, bucket: str
) -> None:
    good = s3_config(s3_server, bucket, STORE_PATH="check", STORE_S3_MAX_ATTEMPTS=1)
    wrong = {**good, "STORE_S3_SECRET_KEY": "not-the-secret"}
    app = local_app("quart", tmp_path, documents=wrong, more=good)
    Store(app)
    result = cli(app, "check")
    assert result.exit_code == 1
    steps = blocks(result)
    assert steps["default"] == steps["exports"] == steps["mem"] == steps["more"] == PROBE
    assert steps["documents"] == [["config", "ok"], ["reach", "FAILED"]]  # the rest skipped
    lines = [line for line in result.output.splitlines() if line.startswith("documents")]
    assert "documents  reach    FAILED  access denied" in lines[1]
    # The fix names the keys where they are set: in the storage's dict, without STORE_.
    assert lines[2].startswith("documents           fix:    in STORE_STORAGES['documents']: ")
    assert "check S3_ENDPOINT_URL, that the bucket exists (S3_BUCKET)" in lines[2]
    assert not any("STORE_S3_" in line for line in lines)
    assert "not-the-secret" not in result.output
    assert result.output.endswith("checks failed for the storage 'documents'\n")
    assert bucket_files(s3_server, bucket, "check/") == {}  # the good one's probe is gone

    assert cli(app, "check", "--storage", "more").exit_code == 0
    alone = cli(app, "check", "--storage", "documents")
    assert alone.exit_code == 1 and set(blocks(alone)) == {"documents"}

    down = {**good, "STORE_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    app = local_app("flask", tmp_path / "2", documents=down, other=wrong)
    Store(app)
    result = cli(app, "check")
    assert result.exit_code == 1
    assert "documents  reach    FAILED  cannot reach the S3 endpoint" in result.output
    assert "checks failed for the storages 'documents', 'other'" in result.output


def test_check_with_a_wrong_storage_config(tmp_path: Path) -> None:
    app = make_app("flask", tmp_path, STORE_STORAGES={"documents": {"PROVIDER": "s3"}})  # no bucket
    with pytest.raises(NotConfiguredError, match=r"STORE_STORAGES\['documents'\]: S3_BUCKET"):
        Store(app)  # as the app itself would fail; the CLI says the same (below)
    env = {"STORE_PATH": str(tmp_path), "STORE_STORAGES": {"documents": {"PROVIDER": "s3"}}}
    result = invoke(["check"], env)
    assert result.exit_code == 1
    assert result.output.startswith("config   FAILED  the configuration is wrong: ")
    assert "STORE_STORAGES['documents']: S3_BUCKET" in result.output


# --- migrate ------------------------------------------------------------------------------------


def test_migrate_between_storages(app_kind: str, tmp_path: Path) -> None:
    fill(tmp_path / "default")
    app = local_app(app_kind, tmp_path)
    Store(app)
    result = cli(app, "migrate", "--to-storage", "exports")
    assert result.exit_code == 0, result.output
    assert "copied 5 files (" in result.output and "to the storage 'exports'" in result.output
    assert "StoreType(storage='exports')" in result.output
    assert tree(tmp_path / "exports") == FILES

    again = cli(app, "migrate", "--to-storage", "exports")
    assert again.exit_code == 0, again.output
    assert "copied 0 files (0 B)" in again.output and "skipped 5 already there" in again.output

    # Into memory and back into a third folder, --storage picking the source.
    assert cli(app, "migrate", "--storage", "exports", "--to-storage", "mem").exit_code == 0
    assert listed(cli(app, "ls", "--storage", "mem")) == sorted(FILES)
    (tmp_path / "exports" / "a.txt").write_bytes(b"changed\n")
    (tmp_path / "exports" / "new.txt").write_bytes(b"new")
    result = cli(app, "migrate", "--storage", "exports", "--to-storage", "mem")
    assert result.exit_code == 1
    assert "copied 1 files" in result.output and "skipped 4 already there" in result.output
    assert "conflict: a.txt is there with other content (left as it is)" in result.output

    # Back into the default storage: same bytes there, a conflict for a.txt, never overwritten.
    result = cli(app, "migrate", "--storage", "exports", "--to-storage", "default")
    assert result.exit_code == 1, result.output
    assert "copied 1 files" in result.output and "1 conflicts" in result.output
    assert tree(tmp_path / "default") == {**FILES, "new.txt": b"new"}


def test_migrate_to_an_s3_storage(tmp_path: Path, s3_server: SeaweedFS, bucket: str) -> None:
    fill(tmp_path / "default")
    documents = s3_config(s3_server, bucket, STORE_PATH="migrated")
    app = local_app("quart", tmp_path, documents=documents)
    Store(app)
    result = cli(app, "migrate", "--to-storage", "documents", "--prefix", "avatars/")
    assert result.exit_code == 0, result.output
    avatars = {k: v for k, v in FILES.items() if k.startswith("avatars/")}
    assert bucket_files(s3_server, bucket, "migrated/") == avatars
    result = cli(app, "migrate", "--to-storage", "documents")
    assert result.exit_code == 0, result.output
    assert "copied 3 files" in result.output and "skipped 2 already there" in result.output
    assert bucket_files(s3_server, bucket, "migrated/") == FILES

    s3_client(s3_server).put_object(Bucket=bucket, Key="migrated/x.txt", Body=b"theirs")
    fill(tmp_path / "default", {"x.txt": b"ours"})
    result = cli(app, "migrate", "--to-storage", "documents")
    assert result.exit_code == 1
    assert "conflict: x.txt is there with other content" in result.output
    assert bucket_files(s3_server, bucket, "migrated/")["x.txt"] == b"theirs"

    # And from S3 into the exports folder.
    result = cli(app, "migrate", "--storage", "documents", "--to-storage", "exports")
    assert result.exit_code == 0, result.output
    assert tree(tmp_path / "exports") == {**FILES, "x.txt": b"theirs"}


def test_migrate_refuses(tmp_path: Path) -> None:
    elsewhere = "http://127.0.0.1:9"  # never asked: each refusal comes before any I/O
    s3 = {"PROVIDER": "s3", "S3_BUCKET": "b", "S3_ENDPOINT_URL": elsewhere, "PATH": "docs"}
    app = local_app("flask", tmp_path, documents=s3, again={**s3, "S3_ACL": "private"})
    Store(app)
    cases = {
        ("--to-storage", "default"): "--to-storage 'default' is the storage the files are "
        "copied from",
        ("--storage", "exports", "--to-storage", "exports"): "--to-storage 'exports' is the "
        "storage the files are copied from",
        ("--storage", "documents", "--to-storage", "again"): "the storages 'documents' and "
        "'again' keep their files in the same place (s3 bucket=b path=docs)",
        (): "give where to copy to: --to TARGET or --to-storage NAME",
        ("--to", str(tmp_path / "x"), "--to-storage", "exports"): "--to TARGET or --to-storage",
        ("--to-storage", "exports", "--to-config", "STORE_PATH=x"): "--to-config is for --to",
        ("--storage", "exports", "--to", str(tmp_path / "exports")): "the destination is the "
        "store itself",
    }
    for args, message in cases.items():
        result = cli(app, "migrate", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    assert tree(tmp_path) == {}


# --- drain --------------------------------------------------------------------------------------


def background_config(tmp_path: Path, *, shared_spool: bool = False) -> dict[str, Any]:
    """Background uploads on for the default storage and ``exports`` (each its own spool, or
    one they share), not for ``mem``."""

    def spool(name: str) -> str:
        return str(tmp_path / ("spool" if shared_spool else f"spool-{name}"))

    # One attempt each, and no retry during a test (the app retries every MAX_BACKOFF s).
    background = {"BACKGROUND": True, "BACKGROUND_RETRIES": 1, "BACKGROUND_MAX_BACKOFF": 3600}
    return {
        "STORE_PATH": str(tmp_path / "default"),
        **{f"STORE_{k}": v for k, v in background.items()},
        "STORE_SPOOL_PATH": spool("default"),
        "STORE_STORAGES": {
            "exports": {"PATH": str(tmp_path / "exports"), **background, "SPOOL_PATH": spool("e")},
            "mem": {"PROVIDER": "memory"},
        },
    }


def spool_undeliverable(tmp_path: Path, config: dict[str, Any], count: int) -> None:
    """``count`` uploads spooled for each of the default storage and ``exports`` that could not
    be delivered: a file stands where their folder goes."""
    for name in ("default", "exports"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "docs").write_bytes(b"")
    save_undeliverable(make_app("quart", None, **config), ["default", "exports"], count)


def spooled(path: Path) -> list[str]:
    return [p.name for p in path.iterdir() if p.name != "names"]


def delivered(count: int) -> dict[str, bytes]:
    return {f"docs/{i}.bin": bytes(1000 * (i + 1)) for i in range(count)}


def test_drain_each_storage_from_its_own_spool(tmp_path: Path) -> None:
    config = background_config(tmp_path)
    spool_undeliverable(tmp_path, config, 2)
    assert len(spooled(tmp_path / "spool-default")) == len(spooled(tmp_path / "spool-e")) == 2

    app = make_app("quart", None, **config)  # a new process, as it were
    Store(app)
    result = cli(app, "drain")
    assert result.exit_code == 1
    assert "default: delivered 0 of 2 spooled uploads" in result.output
    assert "exports: delivered 0 of 2 spooled uploads" in result.output
    assert "exports: not delivered: docs/0.bin: ProviderError: " in result.output
    assert "mem" not in result.output  # no background uploads there

    early = cli(app, "migrate", "--storage", "exports", "--to-storage", "mem")
    assert "warning: 2 background uploads are still spooled and are not copied; run 'store " in (
        early.output
    )
    assert "run 'store drain --storage exports' first" in early.output

    (tmp_path / "exports" / "docs").unlink()  # the cause is fixed for one storage
    result = cli(app, "drain", "--storage", "exports")
    assert result.exit_code == 0, result.output
    # The app's own loop delivers what is spooled when it starts, as the drain does: whichever
    # comes first delivers a job (exactly once), so the drain finds 2 jobs, or fewer.
    found = re.fullmatch(r"exports: delivered (\d) of (\d) spooled uploads\n", result.stdout)
    assert found and found[1] == found[2] and int(found[1]) <= 2, result.stdout
    if found[1] != "0":
        assert f"exports: {found[1]} uploads: 100%" in result.stderr  # the bar names it
    assert tree(tmp_path / "exports") == delivered(2)
    assert spooled(tmp_path / "spool-e") == []
    assert len(spooled(tmp_path / "spool-default")) == 2  # the other one's are left alone

    (tmp_path / "default" / "docs").unlink()
    result = cli(app, "drain")
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()
    # As above: the storage's own uploader may deliver some first (exactly once either way).
    found = re.fullmatch(r"default: delivered (\d) of (\d) spooled uploads", first)
    assert found and found[1] == found[2] and int(found[1]) <= 2, result.stdout
    assert second == "exports: delivered 0 of 0 spooled uploads"
    assert tree(tmp_path / "default") == delivered(2)

    # A copy into a storage with background uploads is written to it, never spooled.
    fill(tmp_path / "default", {"copied.txt": b"c"})
    assert cli(app, "migrate", "--to-storage", "exports").exit_code == 0
    assert (tmp_path / "exports" / "copied.txt").read_bytes() == b"c"
    assert spooled(tmp_path / "spool-e") == []

    off = cli(app, "drain", "--storage", "mem")
    assert off.exit_code == 0
    assert off.output == "STORE_STORAGES['mem']: BACKGROUND is off: no uploads are spooled\n"


def test_drain_and_check_with_a_spool_two_storages_share(tmp_path: Path) -> None:
    """Uploads of another storage of the app in the same spool are not "for another store":
    that storage's drain delivers them."""
    config = background_config(tmp_path, shared_spool=True)
    spool_undeliverable(tmp_path, config, 2)
    assert len(spooled(tmp_path / "spool")) == 4
    app = make_app("quart", None, **config)
    store = Store(app)

    # (Its probe's background upload starts the app's delivery loop, which tries the spooled
    # uploads again, in vain: they stay.)
    result = cli(app, "check", "--storage", "exports")
    assert result.exit_code == 0, result.output
    assert "2 uploads waiting for delivery in " in result.output
    assert ", 2 of the storage 'default'" in result.output

    (tmp_path / "default" / "docs").unlink()
    (tmp_path / "exports" / "docs").unlink()

    result = cli(app, "drain", "--storage", "exports")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "exports: delivered 2 of 2 spooled uploads",
        "exports: 2 uploads in the same spool are the storage 'default''s: "
        "'store drain --storage default' delivers them",
    ]
    result = cli(app, "drain")
    assert result.exit_code == 0, result.output
    assert "another store" not in result.output
    assert tree(tmp_path / "default") == tree(tmp_path / "exports") == delivered(2)
    assert spooled(tmp_path / "spool") == []
    store.close()


def test_drain_names_another_stores_uploads(tmp_path: Path) -> None:
    config = background_config(tmp_path, shared_spool=True)
    spool_undeliverable(tmp_path, config, 1)
    (tmp_path / "exports" / "docs").unlink()
    # The same spool, now without the default storage's background uploads: its job is for
    # a store that does not spool here any more.
    config = {**config, "STORE_BACKGROUND": False}
    app = make_app("quart", None, **config)
    Store(app)
    result = cli(app, "drain")
    assert result.exit_code == 1
    assert "exports: delivered 1 of 1 spooled uploads" in result.output
    assert "exports: 1 spooled uploads in " in result.output
    assert "are for another store, not the storage 'exports'" in result.output
    assert "exports: fix: deliver them with the store they were spooled for" in result.output


# --- python -m async_store, configured by the environment ---------------------------------------


def test_environment_with_store_keys_only_has_the_default_storage(tmp_path: Path) -> None:
    result = invoke(["check"], {"STORE_PATH": str(tmp_path)})
    assert result.exit_code == 0, result.output
    # One storage: the seed's lines, which do not name it.
    steps = [line.split()[:2] for line in result.output.splitlines()[:-1]]
    assert steps == PROBE and result.output.endswith("\nall checks passed\n")
    unknown = invoke(["ls", "--storage", "exports"], {"STORE_PATH": str(tmp_path)})
    assert unknown.exit_code == 2
    assert "no storage named 'exports': this app has 'default'" in unknown.output


def test_store_storages_from_the_environment(tmp_path: Path) -> None:
    fill(tmp_path / "default", {"a.txt": b"a"})
    fill(tmp_path / "exports", {"b.txt": b"b"})
    env = {
        "STORE_PATH": str(tmp_path / "default"),
        # JSON, as the environment gives it; a route would be served: not here, no server.
        "STORE_STORAGES": {"exports": {"PATH": str(tmp_path / "exports"), "SERVE": True}},
    }
    assert listed(invoke(["ls", "--storage", "exports"], env)) == ["b.txt"]
    assert listed(invoke(["ls"], env)) == ["a.txt"]
    result = invoke(["check"], env)
    assert result.exit_code == 0, result.output
    assert blocks(result) == {"default": PROBE, "exports": PROBE}
    result = invoke(["migrate", "--to-storage", "exports"], env)
    assert result.exit_code == 0, result.output
    assert tree(tmp_path / "exports") == {"a.txt": b"a", "b.txt": b"b"}

    not_json = invoke(["ls"], {**env, "STORE_STORAGES": "{'exports': {}}"})
    assert not_json.exit_code == 2
    assert "STORE_STORAGES must be a JSON object" in not_json.output


def test_store_storages_from_the_environment_subprocess(tmp_path: Path) -> None:
    """A real ``python -m async_store check``, its second storage from STORE_STORAGES."""
    env = {
        "PATH": os.environ["PATH"],
        "STORE_PATH": str(tmp_path / "default"),
        "STORE_STORAGES": json.dumps({"exports": {"PATH": str(tmp_path / "exports")}}),
    }
    done = subprocess.run(
        [sys.executable, "-m", "async_store", "check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    names = {line.split()[0] for line in done.stdout.splitlines()[:-1]}
    assert names == {"default", "exports"} and done.stdout.endswith("all checks passed\n")
