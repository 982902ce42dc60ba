"""The command line: ``flask store …``, ``quart store …``, ``python -m async_store …``.

Against real local folders and a real SeaweedFS. The S3 server of this module has an identity
configured (unlike the suite's shared one, which accepts any key), so wrong credentials are
really refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result

from async_store import Store
from async_store.cli import main
from async_store.cli._app import store_for_config
from async_store.cli.migrate import Migration
from tests.conftest import make_app, s3_client, s3_config, spool_undeliverable, unavailable
from tests.seaweed import SeaweedFS, free_port

PYTHON = sys.executable
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def s3_server(signed_s3_server: SeaweedFS) -> SeaweedFS:
    """This module's S3 refuses every key but S3_CREDENTIALS (see conftest)."""
    return signed_s3_server


@pytest.fixture(scope="module")
def bucket(s3_server: SeaweedFS) -> str:
    """One bucket for the module, each test below a prefix of its own: a new bucket costs
    SeaweedFS a new collection and its volumes (seconds)."""
    s3_client(s3_server).create_bucket(Bucket="cli")
    return "cli"


def env_of(config: dict[str, Any]) -> dict[str, str]:
    """STORE_* config as environment variables, as python -m async_store reads them."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def invoke(args: list[str], config: dict[str, Any] | None = None) -> Result:
    """``python -m async_store ARGS`` in this process, configured by the environment."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("STORE_")}
    env.update(env_of(config or {}))
    return CliRunner().invoke(main, args, env=env)


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def bucket_files(server: SeaweedFS, bucket: str, prefix: str = "") -> dict[str, bytes]:
    client = s3_client(server)
    found = {}
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        found[obj["Key"].removeprefix(prefix)] = body
    return found


FILES = {
    "a.txt": b"top level\n",
    "avatars/me.jpg": os.urandom(3000),
    "avatars/2024/you.png": os.urandom(70_000),
    "docs/report.pdf": b"%PDF" + os.urandom(200),
    "фото.txt": b"unicode name",
}


def fill(path: Path, files: dict[str, bytes] = FILES) -> None:
    for relative, data in files.items():
        (path / relative).parent.mkdir(parents=True, exist_ok=True)
        (path / relative).write_bytes(data)


# --- ls, and registration in Flask's and Quart's command groups -------------------------------


def test_ls_in_flask_and_quart(app_kind: str, store_path: Path) -> None:
    fill(store_path)
    (store_path / ".async_store-123.part").write_bytes(b"half a file")  # a save in progress
    (store_path / "avatars" / ".hidden").write_bytes(b"x")
    app = make_app(app_kind, store_path)
    Store(app)
    result = app.test_cli_runner().invoke(args=["store", "ls"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # Every file, in path order, with its size; temp and hidden files are not files of the store.
    assert [line.split()[-1] for line in lines[:-1]] == sorted(FILES)
    assert [int(line.split()[0]) for line in lines[:-1]] == [len(FILES[p]) for p in sorted(FILES)]
    assert lines[-1] == f"5 files, {sum(map(len, FILES.values())) / 1024:.1f} KiB"
    folder = app.test_cli_runner().invoke(args=["store", "ls", "avatars/"])
    assert [line.split()[-1] for line in folder.output.splitlines()[:-1]] == [
        "avatars/2024/you.png",
        "avatars/me.jpg",
    ]
    escape = app.test_cli_runner().invoke(args=["store", "ls", "../"])
    assert escape.exit_code == 1 and "relative path" in escape.output


def test_an_app_without_store_has_no_store_command(tmp_path: Path) -> None:
    app = make_app("flask", None)
    result = app.test_cli_runner().invoke(args=["store", "ls"])
    assert result.exit_code == 2 and "No such command 'store'" in result.output


async def test_files_listing_on_s3_and_through_the_sync_shim(
    s3_server: SeaweedFS, bucket: str
) -> None:
    app = make_app("flask", None, **s3_config(s3_server, bucket, STORE_PATH="media"))
    store = Store(app)
    client = s3_client(s3_server)
    for relative, data in FILES.items():
        client.put_object(Bucket=bucket, Key=f"media/{relative}", Body=data)
    client.put_object(Bucket=bucket, Key="media-not/a.txt", Body=b"not below STORE_PATH")
    client.put_object(Bucket=bucket, Key="media/avatars/", Body=b"")  # a folder marker
    try:
        state = store.state(app)
        listed = [f async for f in state.provider_class.files("avatars")]
        assert [(f.path, f.size) for f in listed] == [
            ("avatars/2024/you.png", 70_000),
            ("avatars/me.jpg", 3000),
        ]
        assert listed[0].modified.tzinfo is not None
        shim = await anyio.to_thread.run_sync(lambda: list(state.sync_provider_class.files()))
        assert [f.path for f in shim] == sorted(FILES)
    finally:
        store.close()
    config = s3_config(s3_server, bucket, STORE_PATH="media")
    result = await anyio.to_thread.run_sync(invoke, ["ls", "docs/"], config)
    assert result.exit_code == 0, result.output
    assert result.output.split()[:1] == ["204"] and "docs/report.pdf" in result.output


# --- check --------------------------------------------------------------------------------------


def test_check_local(store_path: Path) -> None:
    result = invoke(["check"], {"STORE_PATH": str(store_path)})
    assert result.exit_code == 0, result.output
    steps = [line.split()[:2] for line in result.output.splitlines()[:-1]]
    assert steps == [["config", "ok"], ["reach", "ok"], ["write", "ok"], ["read", "ok"]] + [
        ["delete", "ok"]
    ]
    assert str(store_path) in result.output and result.output.endswith("all checks passed\n")
    assert tree(store_path) == {}  # the probe is gone


def test_check_store_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    result = invoke(["check"], {"STORE_PATH": str(tmp_path / "file" / "store")})
    assert result.exit_code == 1
    assert result.output.startswith("config   FAILED")
    assert "set STORE_PATH to a folder this process can write to" in result.output


def test_check_without_any_config() -> None:
    result = invoke(["check"])
    assert result.exit_code == 1
    assert "pass --app module:app, or set STORE_* environment variables" in result.output


def test_check_unwritable_folder_in_a_subprocess(tmp_path: Path) -> None:
    """A real ``python -m async_store check`` on a folder it may not write to.

    The tests run as root, who may write anywhere: the subprocess runs without the capability
    that allows that (setpriv), on a folder that belongs to someone else.
    """
    store_path = tmp_path / "store"
    store_path.mkdir(mode=0o755)
    command = [PYTHON, "-m", "async_store", "check"]
    if os.getuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            unavailable("setpriv (util-linux) is needed to drop root's file capabilities")
        os.chown(store_path, 65534, 65534)
        caps = "-dac_override,-dac_read_search"
        command = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *command]
    else:
        store_path.chmod(0o555)
    env = {"PATH": os.environ["PATH"], "STORE_PATH": str(store_path)}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("config   FAILED")
    assert f"STORE_PATH {str(store_path)!r} is not writable by this process" in done.stdout


def test_check_s3(s3_server: SeaweedFS, bucket: str) -> None:
    good = s3_config(s3_server, bucket, STORE_PATH="check", STORE_S3_MAX_ATTEMPTS=1)
    result = invoke(["check"], good)
    assert result.exit_code == 0, result.output
    assert f"bucket {bucket!r}, prefix 'check', endpoint {s3_server.endpoint}" in result.output
    assert bucket_files(s3_server, bucket, "check/") == {}

    wrong_key = {**good, "STORE_S3_SECRET_KEY": "not-the-secret"}
    result = invoke(["check"], wrong_key)
    assert result.exit_code == 1
    assert "reach    FAILED  access denied" in result.output
    assert "fix:    check STORE_S3_ENDPOINT_URL" in result.output
    assert "STORE_S3_ACCESS_KEY / STORE_S3_SECRET_KEY" in result.output
    assert "not-the-secret" not in result.output
    assert "write" not in result.output  # later steps are not tried

    result = invoke(["check"], {**good, "STORE_S3_BUCKET": "no-such-bucket"})
    assert result.exit_code == 1
    assert "bucket 'no-such-bucket' does not exist: create it, or fix STORE_S3_BUCKET" in (
        result.output
    )

    down = {**good, "STORE_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    result = invoke(["check"], down)
    assert result.exit_code == 1
    assert "reach    FAILED  cannot reach the S3 endpoint" in result.output


# --- migrate ------------------------------------------------------------------------------------


def test_migrate_local_to_s3_and_back(tmp_path: Path, s3_server: SeaweedFS, bucket: str) -> None:
    source = tmp_path / "source"
    fill(source)
    s3 = s3_config(s3_server, bucket)
    to_s3 = ["migrate", "--to", f"s3://{bucket}/migrated"] + [
        f"--to-config={k}={v}" for k, v in s3.items() if k.startswith("STORE_S3_")
    ]
    result = invoke(to_s3, {"STORE_PATH": str(source)})
    assert result.exit_code == 0, result.output
    assert "copied 5 files (" in result.output and "skipped 0 already there" in result.output
    assert "StoreType columns need no rewrite" in result.output
    assert "5 files: 100%" in result.stderr  # the progress bar
    assert bucket_files(s3_server, bucket, "migrated/") == FILES  # same paths, same bytes

    again = invoke(to_s3, {"STORE_PATH": str(source)})
    assert again.exit_code == 0, again.output
    assert "copied 0 files (0 B)" in again.output and "skipped 5 already there" in again.output

    # S3 to S3: the source's endpoint and credentials are the destination's default.
    result = invoke(["migrate", "--to", f"s3://{bucket}/copy"], {**s3, "STORE_PATH": "migrated"})
    assert result.exit_code == 0, result.output
    assert bucket_files(s3_server, bucket, "copy/") == FILES

    back = tmp_path / "back"
    result = invoke(["migrate", "--to", str(back)], {**s3, "STORE_PATH": "migrated"})
    assert result.exit_code == 0, result.output
    assert tree(back) == FILES
    assert [p.name for p in back.rglob(".*")] == []  # no temp file left behind


def test_migrate_keeps_the_type_the_bytes_showed(
    tmp_path: Path, s3_server: SeaweedFS, bucket: str
) -> None:
    """HTML saved as notes.txt is served as HTML (an attachment), wherever it is migrated:
    its checked type goes with it, local to S3 and back, not the name's text/plain."""
    source, back = tmp_path / "source", tmp_path / "back"
    app = make_app("quart", source, STORE_CHECK_CONTENT=True)
    store = Store(app)

    async def save() -> None:
        async with app.app_context():
            await store.AsyncProvider(
                b"<!doctype html><script>x()</script>", filename="notes.txt"
            ).save()

    anyio.run(save)
    s3 = s3_config(s3_server, bucket)
    to_s3 = ["migrate", "--to", f"s3://{bucket}/typed"] + [
        f"--to-config={k}={v}" for k, v in s3.items() if k.startswith("STORE_S3_")
    ]
    result = invoke(to_s3, {"STORE_PATH": str(source)})
    assert result.exit_code == 0, result.output
    head = s3_client(s3_server).head_object(Bucket=bucket, Key="typed/notes.txt")
    assert head["ContentType"] == "text/html"
    assert head["ContentDisposition"].startswith("attachment")  # active: never run inline
    result = invoke(["migrate", "--to", str(back)], {**s3, "STORE_PATH": "typed"})
    assert result.exit_code == 0, result.output
    assert os.getxattr(back / "notes.txt", "user.async_store.content_type") == b"text/html"


def test_migrate_never_overwrites_other_content(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    fill(source)
    # Same size, other bytes: only the checksum tells them apart.
    fill(target, {"a.txt": b"same size\n", "avatars/me.jpg": FILES["avatars/me.jpg"]})
    result = invoke(["migrate", "--to", f"file://{target}"], {"STORE_PATH": str(source)})
    assert result.exit_code == 1
    assert "copied 3 files" in result.output and "skipped 1 already there" in result.output
    assert "conflict: a.txt is there with other content (left as it is)" in result.output
    assert tree(target) == {**FILES, "a.txt": b"same size\n"}


def test_migrate_refuses_to_copy_onto_itself(store_path: Path) -> None:
    result = invoke(["migrate", "--to", str(store_path)], {"STORE_PATH": str(store_path)})
    assert result.exit_code == 2 and "the destination is the store itself" in result.output


def test_migrate_resumes_after_a_cancel_midway(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    files = {f"f{i:02}.bin": os.urandom(20_000) for i in range(12)}
    fill(source, files)
    config = {"STORE_PATH": str(source), "STORE_CHUNK_SIZE": 4096}
    src = store_for_config(config).provider_class
    dst = store_for_config({"STORE_PATH": str(target), "STORE_CHUNK_SIZE": 4096}).provider_class
    copied_bytes = 0

    async def cancelled_midway() -> None:
        with anyio.CancelScope() as scope:

            def on_bytes(n: int) -> None:
                nonlocal copied_bytes
                copied_bytes += n
                if copied_bytes > 4 * 20_000 + 8192:  # two chunks into the fifth file
                    scope.cancel()

            migration = Migration(src, dst, jobs=1, on_bytes=on_bytes)
            await migration.run([f async for f in src.files()], {})
        assert scope.cancelled_caught

    anyio.run(cancelled_midway)
    # Four files whole, the fifth nowhere: not at its path, not as a temp file.
    assert tree(target) == {name: files[name] for name in sorted(files)[:4]}
    assert [p.name for p in target.rglob(".*")] == []
    before = {p.name: p.stat().st_ino for p in target.iterdir()}

    result = invoke(["migrate", "--to", str(target)], config)
    assert result.exit_code == 0, result.output
    assert "copied 8 files" in result.output and "skipped 4 already there" in result.output
    assert tree(target) == files  # every file once, no renamed duplicate
    assert {n: (target / n).stat().st_ino for n in before} == before  # none copied again


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_migrate_killed_process_then_rerun(tmp_path: Path, how: signal.Signals) -> None:
    """A real ``python -m async_store migrate``, killed partway, then run again.

    SIGKILL may leave a hidden temp file (never listed, never served); SIGTERM cancels the
    copies in progress, which clean up, and says how to resume."""
    source, target = tmp_path / "source", tmp_path / "target"
    files = {f"f{i:03}.bin": os.urandom(256 * 1024) for i in range(40)}
    fill(source, files)
    env = {"PATH": os.environ["PATH"], "STORE_PATH": str(source), "STORE_CHUNK_SIZE": "4096"}
    command = [PYTHON, "-m", "async_store", "migrate", "--to", str(target), "--jobs", "1"]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )

    def published() -> set[str]:
        return {p.name for p in target.glob("*") if not p.name.startswith(".")}

    try:
        deadline = time.monotonic() + 30
        while len(published()) < 3 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        process.send_signal(how)
        output, _ = process.communicate(timeout=10)
    before = published()
    assert 3 <= len(before) < len(files), "the kill should land midway"
    for name in before:
        assert (target / name).read_bytes() == files[name]  # whatever is published is whole
    if how == signal.SIGTERM:
        assert process.returncode == 130
        said = re.search(r"interrupted after copying (\d+) files: run it again", output)
        assert said is not None and int(said[1]) <= len(before), output
        assert [p.name for p in target.glob(".*")] == []
    listed = invoke(["ls"], {"STORE_PATH": str(target)})
    assert listed.output.endswith(f"{len(before)} files, {len(before) * 256}.0 KiB\n")

    env["STORE_CHUNK_SIZE"] = str(1024 * 1024)  # the first run was slowed down to be caught
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"skipped {len(before)} already there" in done.stdout
    assert f"copied {len(files) - len(before)} files" in done.stdout
    assert {k: v for k, v in tree(target).items() if not k.startswith(".")} == files


# --- drain --------------------------------------------------------------------------------------


def spooled(config: dict[str, Any]) -> list[str]:
    return [p.name for p in Path(config["STORE_SPOOL_PATH"]).iterdir() if p.name != "names"]


def test_drain_delivers_what_is_spooled(tmp_path: Path) -> None:
    store_path, config = spool_undeliverable(tmp_path, 3)
    assert len(spooled(config)) == 3

    app = make_app("quart", store_path, **config)  # a new process, as it were
    Store(app)
    result = app.test_cli_runner().invoke(args=["store", "drain"])
    assert result.exit_code == 1
    assert "delivered 0 of 3 spooled uploads" in result.output
    assert "not delivered: docs/0.bin: ProviderError: " in result.output
    assert len(spooled(config)) == 3  # still there for the next try
    early = app.test_cli_runner().invoke(args=["store", "migrate", "--to", str(tmp_path / "m")])
    assert "warning: 3 background uploads are still spooled" in early.output

    (store_path / "docs").unlink()  # the cause is fixed
    result = app.test_cli_runner().invoke(args=["store", "drain"])
    assert result.exit_code == 0, result.output
    assert "delivered 3 of 3 spooled uploads" in result.output
    assert "3 uploads: 100%" in result.stderr  # the progress bar
    assert tree(store_path) == {f"docs/{i}.bin": bytes(1000 * (i + 1)) for i in range(3)}
    assert spooled(config) == []


def test_drain_without_background_uploads(store_path: Path) -> None:
    result = invoke(["drain"], {"STORE_PATH": str(store_path)})
    assert result.exit_code == 0 and "STORE_BACKGROUND is off" in result.output


# --- the real commands, in subprocesses --------------------------------------------------------


def write_app(tmp_path: Path, kind: str, config: dict[str, Any]) -> None:
    cls = "Quart" if kind == "quart" else "Flask"
    (tmp_path / "cliapp.py").write_text(
        textwrap.dedent(f"""\
            from {kind} import {cls}
            from async_store import Store

            app = {cls}(__name__)
            app.config.update({config!r})
            store = Store(app)
            """)
    )


def test_quart_store_check_subprocess(tmp_path: Path, store_path: Path) -> None:
    write_app(tmp_path, "quart", {"STORE_PATH": str(store_path)})
    done = subprocess.run(
        [BIN / "quart", "--app", "cliapp", "store", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.endswith("all checks passed\n")


def test_flask_store_drain_subprocess(tmp_path: Path) -> None:
    """``flask store drain``: the Flask app starts delivering at init_app too; every upload is
    delivered once, whichever loop gets it."""
    store_path, config = spool_undeliverable(tmp_path, 3)
    (store_path / "docs").unlink()
    write_app(tmp_path, "flask", {"STORE_PATH": str(store_path), **config})
    done = subprocess.run(
        [BIN / "flask", "--app", "cliapp", "store", "drain"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The app's own loop may have delivered some before the command listed the spool.
    assert re.fullmatch(r"delivered ([0-3]) of \1 spooled uploads\n", done.stdout)
    assert tree(store_path) == {f"docs/{i}.bin": bytes(1000 * (i + 1)) for i in range(3)}
    assert spooled(config) == []


def test_python_m_with_an_app_factory(
    tmp_path: Path, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(store_path, {"x.txt": b"x"})
    (tmp_path / "factory_for_cli.py").write_text(
        textwrap.dedent(f"""\
            from flask import Flask
            from async_store import Store

            store = Store()


            def create_app():
                app = Flask(__name__)
                app.config["STORE_PATH"] = {str(store_path)!r}
                store.init_app(app)
                return app
            """)
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = invoke(["--app", "factory_for_cli:create_app()", "ls"])
    assert result.exit_code == 0, result.output
    line, total = result.output.splitlines()
    assert line.startswith(f"{1:>12}  ") and line.endswith("  x.txt") and total == "1 file, 1 B"
    missing = invoke(["--app", "no_such_module_here", "ls"])
    assert missing.exit_code == 2 and "cannot import 'no_such_module_here'" in missing.output
