"""Hostile names: what clients send as file names, and what applications pass as paths.

A table of names someone has actually tried, then hypothesis for everything else: whatever the
text or bytes, :func:`clean_filename` gives one short, visible, safe segment, and cleaning it
again changes nothing. The last test saves generated names through a real Store and reads them
back over the app's own route.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from typing import Any

import anyio
import pytest
import quart
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from async_store import Store, UnsafePathError
from async_store._paths import (
    MAX_NAME_BYTES,
    clean_filename,
    clean_key,
    clean_location,
    collision_name,
    safe_join,
    split_ext,
)

DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{dev}{n}" for dev in ("COM", "LPT") for n in [*"0123456789", "¹", "²", "³"]
}
INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn"}
COLLISION = re.compile(r"^(?P<root>.+)_[2-9A-HJ-NP-Za-km-z]{22}(?P<ext>(\.[^.]+)*)$")

# Pieces of names that have broken file name cleaners before, for hypothesis to combine.
TOKENS = [
    *["..", ".", "/", "\\", "．", "／", "＼", "C:", ":", "~", "-", "_", " ", "\t"],
    *["\x00", "\x1b", "\x7f", "\u202e", "\u200b", "\u200d", "\ufeff", "\u00ad", "\ue000"],
    *["CON", "nul", "Com1", "LPT¹", "aux", ".tar", ".gz", ".TAR.GZ", ".txt", ".jpg"],
    *["é", "e", "\u0301", "=", "\u0338", "ﬁ", "Ⅻ", "①", "😀", "★", "фото", "照片", "صورة"],
    *["a" * 60, "я" * 40, "%2e", "%2f", "<", ">", "|", "?", "*", '"', "'", "$"],
]
hostile_text = st.one_of(
    st.text(max_size=300),
    st.text(st.characters(exclude_categories=()), max_size=80),  # surrogates, unassigned
    st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
)
quick = settings(max_examples=400, deadline=None, database=None)


def assert_safe_name(name: str) -> None:
    """Everything a cleaned name promises, checked from outside."""
    assert name
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not any(unicodedata.category(ch) in INVISIBLE for ch in name), ascii(name)
    assert not name.startswith((".", "-", "~"))
    assert not name.endswith((".", " "))  # Windows drops them: two names would be one
    assert name not in (".", "..")
    assert name.partition(".")[0].upper() not in DEVICES
    assert unicodedata.normalize("NFKC", name) == name
    assert len(name.encode()) <= MAX_NAME_BYTES - 23
    assert len(collision_name(name).encode()) <= MAX_NAME_BYTES


# --- the table ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # traversal, absolute and Windows paths: only the last segment is left
        ("../../x", "x"),
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("C:\\Users\\a\\b.txt", "b.txt"),
        ("\\\\server\\share\\c.doc", "c.doc"),
        ("docs/", "docs"),
        # fullwidth dots and slashes are dots and slashes (NFKC) before the split
        ("．．／．．／x", "x"),
        ("..／..／x.png", "x.png"),
        ("．ｅｎｖ", "env"),
        # control, bidi, zero-width and BOM characters vanish
        ("a\x00b.txt", "ab.txt"),
        ("a\x1b[31mred.txt", "a[31mred.txt"),
        ("line\nbreak\r.txt", "linebreak.txt"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("zero\u200bwidth\u200d.txt", "zerowidth.txt"),
        ("\ufeffbom.txt", "bom.txt"),
        ("=\u200b\u0338x.txt", "x.txt"),  # "≠" is a symbol, whether or not U+200B kept it apart
        # Windows device names, any case, with extensions, are made files
        ("CON", "CON_"),
        ("con.txt", "con_.txt"),
        ("Nul.tar.gz", "Nul_.tar.gz"),
        ("COM1", "COM1_"),
        ("lpt9.log", "lpt9_.log"),
        ("LPT¹.txt", "LPT1_.txt"),
        ("CON .txt", "CON_.txt"),
        ("aux.", "aux_"),
        ("con.a.b", "con_.a.b"),
        ("CONOUT$", "CONOUT"),  # "$" goes, and with it the device
        ("console.txt", "console.txt"),
        # nothing usable left
        ("", "file"),
        (None, "file"),
        (".", "file"),
        ("..", "file"),
        ("...", "file"),
        (". . .", "file"),
        ("   ", "file"),
        ("/", "file"),
        ("\\..\\", "file"),
        ("😀😀😀", "file"),
        ("$%^&*", "file"),
        # a name of emoji or symbols keeps its extension
        ("😀.jpg", "file.jpg"),
        ("★☆.png", "file.png"),
        ("😀.tar.gz", "file.tar.gz"),
        # dot-files are not hidden once stored, options are not options
        (".htaccess", "htaccess"),
        (".async_store-x.part", "async_store-x.part"),
        ("...jpg", "jpg"),
        ("-rf", "rf"),
        ("~root", "root"),
        # shell and Windows punctuation
        ("a:b.txt", "a_b.txt"),
        ("a<b>c|d?.txt", "a_b_c_d.txt"),
        ('"quoted" name.txt', "quoted_name.txt"),
        ("photo .jpg", "photo.jpg"),
        ("name.txt.", "name.txt"),
        ("name.txt ", "name.txt"),
        ("x_.tar_.gz", "x.tar.gz"),
        # letters of every script, and the extension, are kept
        ("фото.jpg", "фото.jpg"),
        ("фото отпуск.jpg", "фото_отпуск.jpg"),
        ("照片 2024.png", "照片_2024.png"),
        ("صورة.jpg", "صورة.jpg"),
        ("Φωτογραφία.jpeg", "Φωτογραφία.jpeg"),
        ("cafe\u0301.txt", "café.txt"),
        ("ﬁle①.txt", "file1.txt"),
        # compound extensions whole
        ("backup.tar.gz", "backup.tar.gz"),
        ("Backup.TAR.BZ2", "Backup.TAR.BZ2"),
        ("logs.tar.zst", "logs.tar.zst"),
        ("a.b.c.txt", "a.b.c.txt"),
    ],
)
def test_hostile_names(name: str | None, expected: str) -> None:
    cleaned = clean_filename(name)
    assert cleaned == expected
    assert_safe_name(cleaned)


@pytest.mark.parametrize(
    ("name", "root_bytes", "ext"),
    [
        ("a" * 400, 232, ""),
        ("a" * 400 + ".txt", 228, ".txt"),
        ("я" * 300 + ".pdf", 228, ".pdf"),  # 2-byte letters, never cut in half
        ("😀" * 60 + "x" * 300 + ".tar.gz", 225, ".tar.gz"),
        ("b" * 300 + "." + "c" * 40, 232, ""),  # 41 bytes is no extension
    ],
)
def test_long_names_leave_room_for_the_collision_suffix(
    name: str, root_bytes: int, ext: str
) -> None:
    cleaned = clean_filename(name)
    root, found_ext = split_ext(cleaned)
    assert found_ext == ext
    assert len(root.encode()) == root_bytes
    assert len(collision_name(cleaned).encode()) == MAX_NAME_BYTES
    assert clean_filename(cleaned) == cleaned


def test_bytes_are_decoded_as_utf8() -> None:
    assert clean_filename("фото.jpg".encode()) == "фото.jpg"
    assert clean_filename(b"\xff\xfe../x.txt") == "x.txt"
    assert clean_filename(b"\xff\xfe.txt") == "file.txt"


def test_collision_name_keeps_root_and_extension() -> None:
    match = COLLISION.match(collision_name("report.tar.gz"))
    assert match is not None
    assert (match["root"], match["ext"]) == ("report", ".tar.gz")


@pytest.mark.parametrize(
    "location",
    [
        "..",
        "../x",
        "a/../b",
        "a/..",
        ".",
        "a/./b",
        "a//b",
        ".hidden",
        "a/.git",
        ".async_store-x",
        "a\\b",
        "..\\..\\x",
        "a\x00b",
        "a/\x1fb",
        "a\u202eb",
        "a\u200bb",
        "x" * 256,
    ],
)
def test_unsafe_locations_raise(location: str) -> None:
    with pytest.raises(UnsafePathError):
        clean_location(location)
    with pytest.raises(ValueError):  # UnsafePathError is a ValueError too
        clean_key(f"{location}/a.txt")


@pytest.mark.parametrize(
    "key",
    ["/etc/passwd", "/a.txt", "", "a/", "a.txt/..", "../a.txt", ".env", "a\\..\\b", "a" * 1025],
)
def test_unsafe_keys_raise(key: str) -> None:
    with pytest.raises(UnsafePathError):
        clean_key(key)
    with pytest.raises(UnsafePathError):
        safe_join("/srv/store", key)


@pytest.mark.parametrize(
    ("location", "expected"),
    [(None, ""), ("", ""), ("/", ""), ("/some/where", "some/where"), ("avatars/", "avatars")],
)
def test_locations_are_relative_folders(location: str | None, expected: str) -> None:
    assert clean_location(location) == expected


def test_plain_keys_pass() -> None:
    assert clean_key("docs/фото отпуск.jpg") == "docs/фото отпуск.jpg"
    assert safe_join("/srv/store", "a/b.txt") == "/srv/store/a/b.txt"


# --- properties -----------------------------------------------------------------------------


@quick
@given(hostile_text)
@example("=\u200b\u0338x")  # NFKC, then cleaning, then NFKC again composed "≠"
@example("e\u00ad\u0301.txt")
@example("x_.tar_.gz")  # the second pass saw ".tar.gz" whole
@example("CON")  # "CON_" lost its "_" to the trailing strip
@example("CON." + "._" * 120 + "x")
@example("a" * 226 + ".tarball.gz")
def test_any_text_gives_a_safe_name_that_cleaning_keeps(name: str) -> None:
    cleaned = clean_filename(name)
    assert_safe_name(cleaned)
    assert clean_filename(cleaned) == cleaned


@quick
@given(st.binary(max_size=400))
def test_any_bytes_give_a_safe_name(name: bytes) -> None:
    cleaned = clean_filename(name)
    assert_safe_name(cleaned)
    assert clean_filename(cleaned) == cleaned
    assert clean_filename(cleaned.encode()) == cleaned


@quick
@given(st.text(alphabet=st.characters(categories=["L", "M", "N"]), min_size=1, max_size=40))
def test_letters_and_digits_of_any_script_survive(word: str) -> None:
    word = unicodedata.normalize("NFKC", word)  # "ﬁ" is "fi", "¼" is "1⁄4" (a math symbol)
    assume(all(unicodedata.category(ch)[0] in "LMN" for ch in word))
    assume(word.upper() not in DEVICES)
    assert clean_filename(f"{word}.jpg") == f"{word}.jpg"


@quick
@given(st.lists(st.one_of(hostile_text, st.sampled_from(TOKENS)), max_size=6).map("/".join))
def test_location_and_key_never_leave_the_store(path: str) -> None:
    root = "/srv/store"
    for check in (clean_location, clean_key):
        try:
            cleaned = check(path)
        except UnsafePathError:
            continue
        joined = os.path.normpath(os.path.join(root, cleaned))
        assert joined == root or joined.startswith(root + "/")
        segments = cleaned.split("/") if cleaned else []
        assert not any(s in ("", ".", "..") or s.startswith(".") for s in segments)
        assert "\\" not in cleaned and "\x00" not in cleaned
    try:
        joined = safe_join(root, path)
    except UnsafePathError:
        return
    assert os.path.normpath(joined) == joined and joined.startswith(root + "/")


# --- end to end -----------------------------------------------------------------------------


def test_generated_names_round_trip_through_store_and_route() -> None:
    """Save under hostile names with a real Store, then GET the URL it gave back."""
    with tempfile.TemporaryDirectory() as tmp:
        app = quart.Quart(__name__)
        app.config["STORE_PATH"] = os.path.join(tmp, "store")
        store = Store(app)
        root = os.path.realpath(app.config["STORE_PATH"])

        async def save_and_fetch(name: str, data: bytes) -> None:
            async with app.app_context():
                provider: Any = store.Provider(data, filename=name)
                await provider.save()
            name_bytes = len(provider.filename.encode())
            assert provider.filename == clean_filename(name) or COLLISION.match(provider.filename)
            assert name_bytes <= MAX_NAME_BYTES
            real = os.path.realpath(provider.absolute_path)
            assert os.path.commonpath([root, real]) == root
            assert os.path.dirname(real) == root
            with open(real, "rb") as f:
                assert f.read() == data
            response = await app.test_client().get(provider.relative_url)
            assert response.status_code == 200, provider.relative_url
            assert await response.get_data() == data

        @settings(max_examples=200, deadline=None, database=None)
        @given(hostile_text, st.binary(min_size=1, max_size=64))
        @example("../../etc/passwd", b"x")
        @example("CON.txt", b"y")
        @example("a" * 400 + ".txt", b"z")
        @example("a" * 400 + ".txt", b"again")  # the same long name: the collision form
        def check(name: str, data: bytes) -> None:
            anyio.run(save_and_fetch, name, data)

        try:
            check()
        finally:
            store.close()
        assert [n for n in os.listdir(tmp) if n != "store"] == []


# The characters clean_filename's ASCII fast path accepts, and pieces that make the slow path
# work hard on them: runs of dots and underscores, devices, compound and over-long extensions.
PLAIN_TOKENS = [
    *[".", "..", "_", "__", "-", "~", "+", "=", "@", ",", "(", ")", "[", "]", "a", "Z", "0", "9"],
    *["CON", "con", "Com1", "LPT9", "aux", "NUL", ".tar", ".gz", ".TAR.GZ", ".tar.zst", ".jpg"],
    *["x" * 40, "." + "e" * 33, "IMG_0042", "photo", "_.", "._", "-."],
]
plain_names = st.one_of(
    st.text(st.sampled_from("abcXYZ0129-_.+=@,()[]~"), min_size=1, max_size=300),
    st.lists(st.sampled_from(PLAIN_TOKENS), min_size=1, max_size=30).map("".join),
)


@quick
@given(plain_names, st.sampled_from(["file", "upload"]))
@example("a" * 250 + ".tar.gz", "file")
@example("x_.tar_.gz", "file")
@example("...", "upload")
@example("CON.a.b", "file")
def test_ascii_fast_path_gives_what_the_full_cleaning_gives(name: str, default: str) -> None:
    # clean_filename skips NFKC and the per-character pass for plain ASCII names: byte for byte
    # the same result as the full path, and still everything a cleaned name promises.
    from async_store import _paths

    fast = clean_filename(name, default)
    with pytest.MonkeyPatch.context() as patch:  # no name is plain: every one takes the full path
        patch.setattr(_paths, "_PLAIN_ASCII", re.compile(r"(?!)"))
        full = clean_filename(name, default)
    assert fast == full
    assert clean_filename(name.encode(), default) == full
    assert_safe_name(fast)


@quick
@given(plain_names | hostile_text)
def test_urls_are_quoted_the_same_with_or_without_the_fast_path(name: str) -> None:
    # relative_url skips quote() for paths it would not change: the same URL either way.
    from urllib.parse import quote

    from async_store.backends.base import _URL_PLAIN

    path = f"docs/{clean_filename(name)}"
    if _URL_PLAIN.fullmatch(path):
        assert quote(path, safe="/") == path
