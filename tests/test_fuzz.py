"""Property-based fuzzing (hypothesis) of the names clients send, from the naming function to a
round trip through a real app: upload with a hostile file name, then GET the URL it was given.

Whatever the name: the file lands inside STORE_PATH under a name of at most 255 bytes without
control or bidi characters, keeps its extension, is served back byte for byte, and the app
never answers 500; what the library refuses, it refuses with its own error.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import flask
import pytest
import quart
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from async_store import NotFoundError, Store, UnsafePathError
from async_store._paths import MAX_NAME_BYTES, clean_filename

from .helpers import BOUNDARY, multipart
from .test_paths import TOKENS, assert_safe_name, hostile_text

INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn"}
# Each property is bounded in examples, and the whole file in time (about 15 s on 2 busy cores).
fast = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
round_trips = settings(fast, max_examples=120)

EXTENSIONS = [".jpg", ".png", ".txt", ".pdf", ".tar.gz", ".JPEG", ".mp4", ".csv", ".webp"]
ascii_names = st.one_of(
    st.text(st.characters(codec="ascii"), max_size=300),
    # What the fast path takes whole: runs of "_", ".", "-" are where cleaning works hardest.
    st.text(st.sampled_from("aZ09_.-~+=@,()[]"), min_size=1, max_size=300),
    st.lists(st.sampled_from([t for t in TOKENS if t.isascii()]), max_size=40).map("".join),
)


# --- the naming function ------------------------------------------------------------------


@fast
@given(ascii_names, st.lists(st.integers(0, 300), min_size=1, max_size=4))
@example("IMG_0042.jpg", [0])
@example("a__b.txt", [0])
@example("x_.tar_.gz", [3])
@example("CON.txt", [3])
@example("a" * 300 + ".txt", [150])
def test_ascii_fast_path_agrees_with_the_full_cleaning(name: str, cuts: list[int]) -> None:
    """Plain ASCII names take a fast path; a zero-width space (removed first thing by the full
    cleaning) anywhere in the name forces the full path: both must give the same name."""
    slow = name
    for cut in sorted(cuts, reverse=True):
        slow = slow[:cut] + "\u200b" + slow[cut:]
    assert clean_filename(name) == clean_filename(slow)
    assert_safe_name(clean_filename(name))


@fast
@given(hostile_text, st.sampled_from(EXTENSIONS))
@example("", ".jpg")
@example("CON", ".txt")
@example("a" * 400, ".tar.gz")
@example("../../etc/passwd", ".png")
@example("\u202eevil", ".jpg")
@example(".", ".tar.gz")  # "..tar.gz": a dot-file, as "..jpg" is
def test_the_extension_is_kept(root: str, ext: str) -> None:
    # Only the last path segment is kept: a root with a separator may lose all but its tail,
    # never the extension.
    cleaned = clean_filename(root + ext)
    assert_safe_name(cleaned)
    if has_extension(root + ext, ext):
        assert cleaned.endswith(ext), (root, ext, cleaned)
    else:  # ".jpg", "..jpg", "\x1f.jpg": a dot-file named "jpg" (so is ".htaccess")
        assert cleaned == clean_filename(ext.lstrip("."))


def has_extension(name: str, ext: str) -> bool:
    """Whether ``name`` ends in ``ext`` after a visible root: what is left of it once invisible
    characters vanish and only the last path segment is kept is not just dots."""
    visible = "".join(ch for ch in name if unicodedata.category(ch) not in INVISIBLE)
    tail = re.split(r"[/\\]", unicodedata.normalize("NFKC", visible))[-1]
    return tail.endswith(ext) and tail[: -len(ext)].strip(".") != ""


# --- through a real app ----------------------------------------------------------------------


def disposition_name(name: str, raw: bool) -> bytes:
    """The name as a browser puts it in a multipart header (WHATWG: ``"``, CR and LF
    percent-encoded), or ``raw``, as a hostile client may."""
    encoded = name.encode("utf-8", "replace")
    if raw:
        return encoded
    return encoded.replace(b'"', b"%22").replace(b"\r", b"%0D").replace(b"\n", b"%0A")


class RoundTrip:
    """An app with two upload views (``request.files`` + ``save()``, and ``save_request``)
    answering the stored relative path; posts and gets through its test client."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        app = quart.Quart(__name__) if kind == "quart" else flask.Flask(__name__)
        app.config.update(STORE_PATH=str(root), TESTING=False)
        self.app: Any = app  # its test client is awaited for Quart, not for Flask
        self.store: Store
        if isinstance(app, quart.Quart):
            store = self.store = Store(app)

            @app.post("/classic")
            async def classic_quart() -> str:
                provider = store.Provider((await quart.request.files)["f"])
                await provider.save()
                return str(provider.relative_path)

            @app.post("/stream")
            async def stream_quart() -> str:
                stored = await store.save_request()
                return str(stored.files["f"].relative_path)

        else:
            sync_store = self.store = Store(app)

            @app.post("/classic")
            def classic_flask() -> str:
                provider = sync_store.Provider(flask.request.files["f"])
                provider.save()
                return str(provider.relative_path)

            @app.post("/stream")
            def stream_flask() -> str:
                return str(sync_store.save_request().files["f"].relative_path)

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        if self.kind == "flask":
            client = self.app.test_client()
            with client.open(path, method=method, data=body, headers=headers) as response:
                return response.status_code, response.get_data()

        async def go() -> tuple[int, bytes]:
            client: Any = self.app.test_client()
            response = await client.open(path, method=method, data=body, headers=headers)
            return response.status_code, await response.get_data()

        return anyio.run(go)


@pytest.fixture(params=["quart", "flask"])
def round_trip(request: pytest.FixtureRequest) -> Iterator[RoundTrip]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "store").mkdir()
        trip = RoundTrip(str(request.param), Path(tmp) / "store")
        yield trip
        trip.store.close()
        # Nothing beside the store either: no temp file or folder escaped it.
        assert os.listdir(tmp) == ["store"]


def assert_stored_safely(trip: RoundTrip, relative: str, data: bytes) -> None:
    real = os.path.realpath(trip.root / relative)
    assert os.path.commonpath([os.path.realpath(trip.root), real]) == os.path.realpath(trip.root)
    name = os.path.basename(real)
    assert "/" not in relative and len(name.encode()) <= MAX_NAME_BYTES
    assert not any(unicodedata.category(ch) in INVISIBLE for ch in name), ascii(name)
    assert not name.startswith(".")
    with open(real, "rb") as f:
        assert f.read() == data


@pytest.mark.parametrize("view", ["/classic", "/stream"])
@round_trips
@given(
    name=st.one_of(hostile_text, st.tuples(hostile_text, st.sampled_from(EXTENSIONS)).map("".join)),
    raw=st.booleans(),
    data=st.binary(min_size=1, max_size=64),
)
@example(name="../../etc/passwd.txt", raw=False, data=b"x")
@example(name='a"; name="g.txt', raw=True, data=b"x")
@example(name="a\r\nContent-Type: text/html\r\n\r\n<script>.html", raw=True, data=b"x")
@example(name="..\\..\\win.ini", raw=False, data=b"x")
@example(name="\u202egnp.exe", raw=False, data=b"x")
@example(name="a" * 600 + ".jpg", raw=False, data=b"x")
def test_upload_then_fetch_round_trips(
    round_trip: RoundTrip, view: str, name: str, raw: bool, data: bytes
) -> None:
    body = multipart(("f", disposition_name(name, raw), data))
    status, answer = round_trip.request("POST", view, body)
    # A name that breaks the multipart framing (raw CR/LF, quotes) is the client's error.
    assert status in (200, 400), (status, answer[:500])
    leftovers = [p.name for p in round_trip.root.rglob(".*")]
    assert leftovers == []
    if status != 200:
        return
    relative = answer.decode()
    assert_stored_safely(round_trip, relative, data)
    ext = next((e for e in EXTENSIONS if name.endswith(e)), None)
    if ext is not None and has_extension(name, ext) and not raw:
        assert relative.endswith(ext), (name, relative)
    got_status, got = round_trip.request("GET", f"/uploads/{quote_path(relative)}")
    assert (got_status, got) == (200, data), relative


def quote_path(relative: str) -> str:
    from urllib.parse import quote

    return quote(relative)


SEGMENTS = ["..", ".", "", ".git", "..\\..", "%2e%2e", "a", "b", "~", "\x00", "\u202e", "．．"]


@settings(fast, max_examples=100)
@given(
    st.lists(
        st.one_of(st.sampled_from(SEGMENTS), hostile_text, st.sampled_from(TOKENS)), max_size=5
    ).map("/".join)
)
@example("../evil")
@example("a/../../evil")
@example("/abs/olute")
@example(".hidden/x")
def test_hostile_locations_and_keys_stay_inside_or_raise_the_library_s_error(path: str) -> None:
    """``location=`` and stored keys come from the application: refused (``UnsafePathError``),
    missing (``NotFoundError``), or inside the store; never another exception."""
    with tempfile.TemporaryDirectory() as tmp:
        app = quart.Quart(__name__)
        app.config["STORE_PATH"] = os.path.join(tmp, "store")
        store = Store(app)
        root = os.path.realpath(app.config["STORE_PATH"])

        async def main() -> None:
            async with app.app_context():
                try:
                    provider: Any = store.Provider(b"data", location=path, filename="a.txt")
                    await provider.save()
                except UnsafePathError:
                    pass
                else:
                    real = os.path.realpath(provider.absolute_path)
                    assert os.path.commonpath([root, real]) == root
                try:
                    assert not await store.Provider(path).exists()
                except UnsafePathError:
                    pass
                try:
                    async with store.Provider(path).open():
                        raise AssertionError(f"{path!r} opened")
                except (UnsafePathError, NotFoundError):
                    pass

        try:
            anyio.run(main)
        finally:
            store.close()
        assert set(os.listdir(tmp)) <= {"store"}  # nothing outside the store
