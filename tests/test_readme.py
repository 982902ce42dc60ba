"""Every Python block of README.md and docs/*.md runs, or says that it does not.

A block says so on the line right before its opening fence, in an HTML comment (GitHub does not
show it; the docs hook, docs/_ext/readme.py, drops it from the site)::

    <!-- run: SETUP [OPTION ...] [-F FIELD=@NAME | -F FIELD=TEXT ...] -->
    <!-- not run: WHY -->

SETUP says what the block is, and what it takes as given:

- ``app``: a complete program defining ``app`` (Quart or Flask). It is imported (so
  ``if __name__ == "__main__":`` does not run) and each of its POST routes is sent the form.
- ``view``: routes added to ``app``, given ``store = Store(app)``, ``request`` and the
  framework's class; each POST route the block adds is sent the form.
- ``request``: statements (top-level ``await`` in Quart) run inside a request that posted the
  form, given ``app``, ``store``, ``request``, ``anyio``, a ``provider`` saved earlier
  (``earlier.txt``) and a file stored earlier at ``avatars/me.jpg``.
- ``config``: statements configuring ``app`` (a Quart app) before ``Store(app)``; then
  ``Store(app)`` (unless the block made one) saves, reads back and deletes a file.
- ``factory``: defines ``store`` and ``create_app(config)``; two apps are made with two
  ``STORE_PATH`` and each saves a file into its own folder.

OPTIONS: ``flask`` (a Flask app; Quart by default), ``s3`` (the store is the suite's SeaweedFS,
a bucket per block; implied for a block that sets ``STORE_PROVIDER="s3"``), ``background``
(``STORE_BACKGROUND = True``), ``sqlalchemy`` (``Base``, an ``engine`` on SQLite in the test's
folder and ``session = AsyncSession(engine)``; tables are created at the first flush). ``-F`` is
curl's: ``-F afile=@hello.txt`` (the default) posts a file named hello.txt, ``-F caption=hi`` a
text field. A route must answer 2xx and store every posted file: the store then holds each one,
and each URL its answer gives (text or JSON) fetches one of them (local storage).

The reader's placeholders are pointed at real things just before ``init_app`` reads the config:
a ``STORE_PATH`` outside the test's folder moves into it, and an S3 store talks to the suite's
SeaweedFS (endpoint, bucket, keys replaced; every other key as the block has it). Each block is
compiled under its file's name, padded so that a traceback shows its README.md line; a failure
reads ``README.md:LINE (the block's first line): the error``.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shlex
import sys
import textwrap
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any
from urllib.parse import urlsplit

import anyio
import flask
import httpx
import pytest
import quart

from async_store import Provider, Store, SyncProvider
from tests.conftest import S3_CREDENTIALS, s3_client
from tests.seaweed import SeaweedFS

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!--\s*(?P<kind>run|not run):\s*(?P<args>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
SETUPS = ("app", "view", "request", "config", "factory")
OPTIONS = ("flask", "s3", "background", "sqlalchemy")
S3_PROVIDERS = ("s3", "S3Provider", "S3GeventProvider")
WAIT = 30  # seconds for background deliveries, on loopback


@dataclass
class Block:
    source: str  # 'README.md', 'docs/index.md'
    line: int  # the opening fence's line, from 1
    code: str
    marker: str | None  # the line before the fence, when it is a marker

    @property
    def first(self) -> str:
        return next((line.strip() for line in self.code.splitlines() if line.strip()), "")

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line} ({self.first})"


def find_blocks(source: str, text: str) -> Iterator[Block]:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != opening["fence"]:
            end += 1
        if opening["info"] in ("python", "py"):
            before = lines[i - 1] if i > 0 else ""
            code = textwrap.dedent("\n".join(lines[i + 1 : end]))
            yield Block(source, i + 1, code, before if MARKER.match(before) else None)
        i = end + 1


def all_blocks() -> list[Block]:
    sources = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
    return [b for s in sources for b in find_blocks(s, (ROOT / s).read_text(encoding="utf-8"))]


@dataclass
class Plan:
    setup: str
    options: set[str] = field(default_factory=set)
    form: list[tuple[str, str]] = field(default_factory=list)  # (field, '@name' or text)


def plan_of(block: Block) -> Plan:
    """What the block's marker asks for; ValueError naming the problem."""
    if block.marker is None:
        raise ValueError(
            "no marker: put '<!-- run: SETUP -->' (SETUP one of "
            f"{', '.join(SETUPS)}) or '<!-- not run: WHY -->' on the line before its fence"
        )
    marker = MARKER.match(block.marker)
    assert marker is not None
    if marker["kind"] == "not run":
        if not marker["args"]:
            raise ValueError("'<!-- not run: -->' needs a reason after the colon")
        return Plan("not run")
    args = shlex.split(marker["args"])
    if not args or args[0] not in SETUPS:
        raise ValueError(f"unknown setup in {block.marker!r}: use one of {', '.join(SETUPS)}")
    plan = Plan(args[0])
    rest = iter(args[1:])
    for arg in rest:
        if arg == "-F":
            name, equals, value = next(rest, "").partition("=")
            if not (name and equals):
                raise ValueError(f"-F takes FIELD=@NAME or FIELD=TEXT, in {block.marker!r}")
            plan.form.append((name, value))
        elif arg in OPTIONS:
            plan.options.add(arg)
        else:
            raise ValueError(f"unknown option {arg!r}: use {', '.join(OPTIONS)} or -F")
    if re.search(r"STORE_PROVIDER\W+s3\W|S3(Gevent)?Provider", block.code):
        plan.options.add("s3")
    plan.form = plan.form or [("afile", "@hello.txt")]
    return plan


BLOCKS = all_blocks()
RUNNABLE = [b for b in BLOCKS if b.marker and b.marker.startswith("<!-- run:")]


def test_every_python_block_says_whether_it_runs() -> None:
    assert BLOCKS, "no Python blocks found in README.md and docs/*.md: the parser is broken"
    problems = []
    for block in BLOCKS:
        try:
            plan_of(block)
        except ValueError as exc:
            problems.append(f"{block.where}: {exc}")
    assert not problems, "\n".join(problems)


# --- running one block ---------------------------------------------------------------------


def compiled(block: Block) -> CodeType:
    """The block as code whose line numbers are its file's: tracebacks show README.md lines."""
    code: CodeType = compile(
        "\n" * block.line + block.code,
        str(ROOT / block.source),
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )
    return code


def leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class Harness:
    """One block's run: its test folder, its app's config, the checks after it."""

    def __init__(
        self,
        block: Block,
        plan: Plan,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest,
    ) -> None:
        self.block = block
        self.plan = plan
        self.tmp = tmp_path
        self.flask = "flask" in plan.options
        self.namespace: dict[str, Any] = {"__name__": "readme_block", "anyio": anyio}
        self.server: SeaweedFS | None = None
        self.bucket = ""
        if "s3" in plan.options:
            self.server = request.getfixturevalue("s3_server")
            self.bucket = request.getfixturevalue("bucket")
        monkeypatch.chdir(tmp_path)  # relative paths a block names (app.db) land here
        original = Store.init_app

        def init_app(store: Store, app: Any) -> None:
            self.redirect(app.config)
            for name, keys in (app.config.get("STORE_STORAGES") or {}).items():
                # A named storage's keys, as the STORE_* ones are made real for the test.
                full = {f"STORE_{k.removeprefix('STORE_')}": v for k, v in keys.items()}
                self.redirect(full, f"{self.bucket}-{name}")
                app.config["STORE_STORAGES"][name] = {k[6:]: v for k, v in full.items()}
            original(store, app)

        monkeypatch.setattr(Store, "init_app", init_app)
        self.errors: list[BaseException] = []  # raised in a Quart view
        self.watched: list[Any] = []
        self.files: list[tuple[str, str, bytes]] = []  # (field, name, content) posted
        for number, (name, value) in enumerate(plan.form):
            if value.startswith("@"):
                content = f"{name} #{number}, {value[1:]}, from {block.where}\n".encode()
                self.files.append((name, value[1:], content))

    # --- the reader's placeholders, made real --------------------------------------------

    def redirect(self, config: Any, bucket: str = "") -> None:
        if str(config.get("STORE_PROVIDER", "local")).endswith(S3_PROVIDERS):
            assert self.server is not None, "an S3 block without the s3 option"
            if bucket:  # another storage's bucket, made here
                s3_client(self.server).create_bucket(Bucket=bucket)
            config.update(
                STORE_S3_ENDPOINT_URL=self.server.endpoint,
                STORE_S3_BUCKET=bucket or self.bucket,
                **S3_CREDENTIALS,
            )
            config.pop("STORE_S3_SESSION_TOKEN", None)
            if not config.get("STORE_S3_REGION"):
                config["STORE_S3_REGION"] = "us-east-1"
            return
        for key in ("STORE_PATH", "STORE_SPOOL_PATH"):
            path = config.get(key)
            if path is not None:
                real = os.path.expanduser(str(path))
                if os.path.isabs(real) and not Path(real).is_relative_to(self.tmp):
                    config[key] = str(self.tmp / real.lstrip(os.sep))

    def watch(self, app: Any) -> None:
        """Make an exception in a view the test's: Flask raises it in the test client when
        testing; Quart would render a debug page (which fails outside a request), so it is
        caught from Quart's signal instead and raised by :meth:`check_errors`."""
        if isinstance(app, quart.Quart):
            quart.signals.got_request_exception.connect(self.record, app, weak=False)
            self.watched.append(app)
        else:
            app.config["TESTING"] = True

    def record(self, sender: Any, exception: BaseException, **extra: Any) -> None:
        self.errors.append(exception)

    def check_errors(self) -> None:
        if self.errors:
            raise self.errors[0]

    def config(self) -> dict[str, Any]:
        """The config of an app the harness makes (view, request)."""
        config: dict[str, Any] = {"STORE_PATH": str(self.tmp / "store")}
        if "s3" in self.plan.options:
            config = {"STORE_PROVIDER": "s3"}
        if "background" in self.plan.options:
            config.update(STORE_BACKGROUND=True, STORE_BACKGROUND_BACKOFF=0.05)
        return config

    def make_app(self) -> Any:
        kind = flask.Flask if self.flask else quart.Quart
        app = kind("readme_block", root_path=str(self.tmp), instance_path=str(self.tmp / "i"))
        app.config.update(self.config())
        self.watch(app)
        framework = flask if self.flask else quart
        self.namespace.update(app=app, store=Store(app), request=framework.request, Store=Store)
        self.namespace.update(Flask=flask.Flask, Quart=quart.Quart)
        return app

    def execute(self) -> Any:
        """Run the block in the namespace; a coroutine when it awaits at the top level."""
        return eval(compiled(self.block), self.namespace)

    def stores(self) -> list[Store]:
        return [value for value in self.namespace.values() if isinstance(value, Store)]

    def close(self) -> None:
        for app in self.watched:
            quart.signals.got_request_exception.disconnect(self.record, app)
        for store in self.stores():
            store.close()

    # --- what a route must do with the form ------------------------------------------------

    def body(self) -> tuple[bytes, str]:
        contents = iter(self.files)
        files, data = [], []
        for name, value in self.plan.form:
            if value.startswith("@"):
                _, filename, content = next(contents)
                files.append((name, (filename, content)))
            else:
                data.append((name, value))
        fields: dict[str, list[str]] = {}
        for name, value in data:
            fields.setdefault(name, []).append(value)
        built = httpx.Request("POST", "http://localhost/", files=files, data=fields)
        return built.read(), built.headers["Content-Type"]

    def check_answer(self, rule: str, status: int, text: str) -> list[str]:
        """A 2xx answer; the URLs it gives."""
        assert 200 <= status < 300, f"POST {rule} answered {status}: {text[:800]}"
        try:
            answer: Any = json.loads(text)
        except ValueError:
            answer = text.split()

        def strings(value: Any) -> Iterator[str]:
            if isinstance(value, str):
                yield value
            elif isinstance(value, dict):
                for item in value.values():
                    yield from strings(item)
            elif isinstance(value, list):
                for item in value:
                    yield from strings(item)

        return [s for s in strings(answer) if s.startswith(("/", "http://", "https://"))]

    def check_stored(self, contents: list[bytes]) -> bool:
        return all(content in contents for _, _, content in self.files)

    def missing(self, contents: list[bytes]) -> str:
        names = [name for _, name, content in self.files if content not in contents]
        return f"the store lacks the posted {', '.join(names)} (it holds {len(contents)} files)"

    def local(self, app: Any) -> bool:
        return not str(app.config.get("STORE_PROVIDER", "local")).endswith(S3_PROVIDERS)


def post_rules(app: Any) -> set[str]:
    return {r.rule for r in app.url_map.iter_rules() if "POST" in (r.methods or ())}


# --- Quart --------------------------------------------------------------------------------


async def quart_contents(store: Store, app: Any) -> list[bytes]:
    async with app.app_context():
        provider = store.AsyncProvider
        found = []
        async for stored in provider.files(""):
            async with provider(stored.path).open() as f:
                found.append(await f.read())
        return found


async def quart_post_and_check(run: Harness, app: Any, client: Any, rules: set[str]) -> None:
    assert rules, f"{run.block.where}: the block adds no POST route"
    store = app.extensions["store"].store
    urls = []
    for rule in sorted(rules):
        body, content_type = run.body()
        response = await client.post(rule, data=body, headers={"Content-Type": content_type})
        run.check_errors()
        urls += run.check_answer(rule, response.status_code, await response.get_data(as_text=True))
    with anyio.fail_after(WAIT):  # background uploads: until they are delivered
        while not run.check_stored(contents := await quart_contents(store, app)):
            if not app.config["STORE_BACKGROUND"]:
                raise AssertionError(run.missing(contents))
            await anyio.sleep(0.05)
    if run.local(app):
        for url in urls:
            parts = urlsplit(url)
            fetched = await client.get(parts.path + (f"?{parts.query}" if parts.query else ""))
            assert fetched.status_code == 200, f"GET {url}: {fetched.status_code}"
            assert await fetched.get_data() in contents, f"GET {url}: not a posted file"


@asynccontextmanager
async def quart_client(app: Any) -> AsyncIterator[Any]:
    async with app.test_app() as test_app:
        yield test_app.test_client()


def run_app(run: Harness) -> None:
    module = ModuleType("readme_app")
    module.__file__ = str(run.tmp / "readme_app.py")  # the app's root folder: run.tmp
    sys.modules[module.__name__] = module
    run.namespace = module.__dict__
    try:
        run.execute()
    finally:
        del sys.modules[module.__name__]
    app = run.namespace["app"]
    run.watch(app)
    rules = post_rules(app)
    if isinstance(app, quart.Quart):

        async def main() -> None:
            async with quart_client(app) as client:
                await quart_post_and_check(run, app, client, rules)

        anyio.run(main)
    else:
        flask_post_and_check(run, app, rules)


def run_view(run: Harness) -> None:
    app = run.make_app()
    before = post_rules(app)
    run.execute()
    rules = post_rules(app) - before
    if run.flask:
        flask_post_and_check(run, app, rules)
        return

    async def main() -> None:
        async with quart_client(app) as client:
            await quart_post_and_check(run, app, client, rules)

    anyio.run(main)


def run_request(run: Harness) -> None:
    app = run.make_app()
    store = run.namespace["store"]
    if run.flask:
        flask_request(run, app, store)
        return
    if "sqlalchemy" in run.plan.options:
        sqlalchemy_names(run)

    async def block() -> str:
        result = run.execute()
        if inspect.iscoroutine(result):
            await result
        return "ran"

    app.add_url_rule("/_readme", "readme_block", block, methods=["POST"])

    async def main() -> None:
        async with quart_client(app) as client:
            async with app.app_context():
                me = store.Provider(b"stored earlier", location="avatars", filename="me.jpg")
                await me.save()
                run.namespace["provider"] = store.Provider(b"earlier", filename="earlier.txt")
                await run.namespace["provider"].save()
            body, content_type = run.body()
            try:
                response = await client.post(
                    "/_readme", data=body, headers={"Content-Type": content_type}
                )
                run.check_errors()
                assert response.status_code == 200, await response.get_data(as_text=True)
            finally:
                await close_databases(run)

    with sqlalchemy_tables(run):
        anyio.run(main)


def sqlalchemy_names(run: Harness) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        pass

    engine = create_async_engine(f"sqlite+aiosqlite:///{run.tmp / 'app.db'}")
    run.namespace.update(Base=Base, engine=engine, session=AsyncSession(engine))


@contextmanager
def sqlalchemy_tables(run: Harness) -> Iterator[None]:
    """With the sqlalchemy option: the block's models get their tables at the first flush."""
    if "sqlalchemy" not in run.plan.options:
        yield
        return
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    def create_tables(session: Session, *args: Any) -> None:
        run.namespace["Base"].metadata.create_all(session.connection())

    event.listen(Session, "before_flush", create_tables)
    try:
        yield
    finally:
        event.remove(Session, "before_flush", create_tables)


async def close_databases(run: Harness) -> None:
    if "sqlalchemy" not in run.plan.options:
        return
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    for value in list(run.namespace.values()):
        if isinstance(value, AsyncSession):
            await value.close()
    for value in list(run.namespace.values()):
        if isinstance(value, AsyncEngine):
            await value.dispose()


def run_config(run: Harness) -> None:
    app = quart.Quart("readme_block", root_path=str(run.tmp), instance_path=str(run.tmp / "i"))
    run.namespace.update(app=app, Store=Store)
    run.execute()
    store = next(iter(run.stores()), None) or Store(app)
    run.namespace.setdefault("store", store)

    async def main() -> None:
        async with app.test_app(), app.app_context():
            for storage in store.state(app).storages.values():  # the default, and any named
                content = f"stored in {storage.name} by the config of {run.block.where}\n"
                provider = storage.AsyncProvider(content.encode(), filename="check.txt")
                await provider.save()
                with anyio.fail_after(WAIT):
                    await provider.wait()
                async with provider.open() as f:
                    assert await f.read() == content.encode()
                await provider.delete()

    anyio.run(main)


def run_factory(run: Harness) -> None:
    run.namespace.update(Flask=flask.Flask, Quart=quart.Quart, Store=Store)
    run.execute()
    create_app: Callable[[dict[str, Any]], Any] = run.namespace["create_app"]
    store: Store = run.namespace["store"]
    for name in ("one", "two"):
        app = create_app({"STORE_PATH": str(run.tmp / name)})
        content = name.encode()
        if isinstance(app, quart.Quart):

            async def save(app: Any = app, content: bytes = content) -> None:
                async with app.app_context():
                    provider = store.Provider(content, filename="f.txt")
                    assert isinstance(provider, Provider)  # a Quart app's: the async class
                    await provider.save()

            anyio.run(save)
        else:
            with app.app_context():
                sync_provider = store.Provider(content, filename="f.txt")
                assert isinstance(sync_provider, SyncProvider)
                sync_provider.save()
        assert (run.tmp / name / "f.txt").read_bytes() == content, f"app {name}: not its file"


# --- Flask --------------------------------------------------------------------------------


def flask_contents(store: Store, app: Any) -> list[bytes]:
    with app.app_context():
        provider = store.SyncProvider
        found = []
        for stored in provider.files(""):
            with provider(stored.path).open() as f:
                found.append(f.read())
        return found


def flask_post_and_check(run: Harness, app: Any, rules: set[str]) -> None:
    assert rules, f"{run.block.where}: the block adds no POST route"
    store = app.extensions["store"].store
    client = app.test_client()
    urls = []
    for rule in sorted(rules):
        body, content_type = run.body()
        response = client.post(rule, data=body, content_type=content_type)
        urls += run.check_answer(rule, response.status_code, response.get_data(as_text=True))
    contents = flask_contents(store, app)
    if app.config["STORE_BACKGROUND"]:
        store.close()  # drains the deliveries
        contents = flask_contents(store, app)
    assert run.check_stored(contents), run.missing(contents)
    if run.local(app):
        for url in urls:
            fetched = client.get(urlsplit(url).path)
            assert fetched.status_code == 200, f"GET {url}: {fetched.status_code}"
            assert fetched.get_data() in contents, f"GET {url}: not a posted file"
            fetched.close()


def flask_request(run: Harness, app: Any, store: Store) -> None:
    def block() -> str:
        result = run.execute()
        assert result is None, "a Flask block cannot await"
        return "ran"

    app.add_url_rule("/_readme", "readme_block", block, methods=["POST"])

    with app.app_context():
        store.Provider(b"stored earlier", location="avatars", filename="me.jpg").save()
        run.namespace["provider"] = store.Provider(b"earlier", filename="earlier.txt")
        run.namespace["provider"].save()
    body, content_type = run.body()
    response = app.test_client().post("/_readme", data=body, content_type=content_type)
    assert response.status_code == 200, response.get_data(as_text=True)


RUNNERS: dict[str, Callable[[Harness], None]] = {
    "app": run_app,
    "view": run_view,
    "request": run_request,
    "config": run_config,
    "factory": run_factory,
}


def run_block(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Run ``block`` as its marker says; AssertionError ``FILE:LINE (first line): why``."""
    plan = plan_of(block)
    harness = Harness(block, plan, tmp_path, monkeypatch, request)
    try:
        RUNNERS[plan.setup](harness)
    except Exception as exc:
        why = leaf(exc)
        raise AssertionError(f"{block.where}: {type(why).__name__}: {why}") from exc
    finally:
        harness.close()


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: f"{b.source}:{b.line}")
def test_block_runs(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    run_block(block, tmp_path, monkeypatch, request)


def test_a_broken_block_names_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """What a reader of a failed run sees: the block's place, its first line, the error, and a
    traceback through README.md's own line."""
    text = "Intro.\n\n<!-- run: request -->\n```python\nprovider = store.Provider(x)\n```\n"
    (block,) = find_blocks("README.md", text)
    with pytest.raises(AssertionError) as failed:
        run_block(block, tmp_path, monkeypatch, request)
    assert str(failed.value) == (
        "README.md:4 (provider = store.Provider(x)): NameError: name 'x' is not defined"
    )
    error = leaf(failed.value.__cause__)  # type: ignore[arg-type]
    frames = [(f.filename, f.lineno) for f in traceback.extract_tb(error.__traceback__)]
    assert (str(ROOT / "README.md"), 5) in frames
