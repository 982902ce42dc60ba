"""The demo page in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by selenium: nothing is downloaded), served by uvicorn as ``make demo`` serves it, once
with local storage and once switched to S3 (SeaweedFS) by environment variables; then with S3
down (a fault proxy), and with background uploads waiting for S3 to come back.

On S3 the page sends the files straight to the bucket (Uppy, the direct-upload endpoints) and
the app confirms them: a proxy in front of the app counts what the browser sends it, which is
never the files' bytes. Without a CORS rule letting the page in, the file's line says so.

The resumable path (tus) is tested there too: a large upload through a throttling TCP proxy
that counts the bytes, whose connection is cut and whose server is killed and started again
mid-upload.

The screenshot lands in the test's tmp folder; set ``DEMO_SCREENSHOT=docs/img/demo.png`` to
refresh the one the docs show.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3_CREDENTIALS, new_bucket, s3_client, s3_config, unavailable
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedFS
from tests.test_direct import docs_cors_rule
from tests.test_examples import demo_process, demo_server, paths, query
from tests.test_images import opened as image_of

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15  # seconds for anything the page does: uploads are a few KiB on loopback


def png(width: int, height: int, pixel: Any) -> bytes:
    """A PNG drawn by ``pixel(x, y) -> (r, g, b)``; no imaging library needed."""
    rows = b"".join(
        b"\x00" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(rows, 6)),
            chunk(b"IEND", b""),
        ]
    )


def sunset(x: int, y: int) -> tuple[int, int, int]:
    t = y / 300
    if (x - 200) ** 2 + (y - 190) ** 2 < 55**2:
        return 255, 214, 120
    if y > 230:  # the sea, with a reflection
        glow = max(0.0, 1 - abs(x - 200) / 90) * (0.5 + 0.5 * math.sin(y * 0.9))
        return int(40 + 150 * glow), int(50 + 90 * glow), int(110 + 40 * glow)
    return int(255 - 60 * t), int(140 - 90 * t), int(90 + 60 * t)


def waves(x: int, y: int) -> tuple[int, int, int]:
    wave = 0.5 + 0.5 * math.sin(x / 23 + 3 * math.sin(y / 41)) * math.cos(y / 17)
    return int(20 + 60 * wave), int(110 + 100 * wave), int(170 + 70 * wave)


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium driven by selenium, with its profile in ``profile``."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        unavailable(f"{CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,1060",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


class Backend:
    """Where the demo stores files, and a look at them behind its back."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.database = tmp_path / "demo.sqlite"
        # Where the resumable uploads wait until their last byte (the page's tus endpoint).
        self.tus = tmp_path / "tus"
        self.environ = {
            "DATABASE_URL": f"sqlite+aiosqlite:///{self.database}",
            "STORE_TUS_PATH": str(self.tus),
        }
        self.store = tmp_path / "store"
        if kind == "local":
            self.environ["STORE_PATH"] = str(self.store)
        else:
            # SeaweedFS with an identity: it checks a presigned POST's signature against it.
            server = request.getfixturevalue("signed_s3_server")
            self.bucket = request.getfixturevalue("signed_bucket")
            self.client = s3_client(server)
            # Strings, as a shell would set them; the demo reads them into its config.
            config = s3_config(server, self.bucket)
            self.environ.update({key: str(value) for key, value in config.items()})

    def files(self) -> dict[str, bytes]:
        if self.kind == "local":
            paths = (p for p in self.store.rglob("*") if p.is_file())
            return {p.relative_to(self.store).as_posix(): p.read_bytes() for p in paths}
        listing = self.client.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return {
            item["Key"]: self.client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
            for item in listing
        }

    def rows(self) -> list[tuple[Any, ...]]:
        """(name, size, path of the file) of each row."""
        return paths(query(self.database, "SELECT name, size, file FROM gallery ORDER BY id"))

    def allow(self, origin: str) -> None:
        """The bucket's CORS rule, as docs/direct.md has it, letting the page at ``origin`` in:
        on S3 the page sends its files to the bucket itself."""
        if self.kind == "s3":
            allow_page(self.client, self.bucket, origin)


def allow_page(client: Any, bucket: str, origin: str) -> None:
    """docs/direct.md's CORS rule on ``bucket``, for the page at ``origin``."""
    rule = docs_cors_rule()
    rule["CORSRules"][0]["AllowedOrigins"] = [origin]
    client.put_bucket_cors(Bucket=bucket, CORSConfiguration=rule)


@pytest.fixture
def signed_bucket(signed_s3_server: SeaweedFS) -> Iterator[str]:
    """A new, empty bucket of ``signed_s3_server``, where the page uploads straight to."""
    with new_bucket(signed_s3_server, "page") as name:
        yield name


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend = Backend(request.param, tmp_path, request)
    yield backend
    if backend.kind == "s3":  # the bucket fixture deletes the bucket, not what is in it
        for key in backend.files():
            backend.client.delete_object(Bucket=backend.bucket, Key=key)
        backend.client.close()


# Runs in the page: files made from base64, dropped on the zone or pasted, as the OS would hand
# them over.
HAND_OVER = """
const [how, names, contents] = arguments;
const data = new DataTransfer();
names.forEach((name, i) => {
  const bytes = Uint8Array.from(atob(contents[i]), (c) => c.charCodeAt(0));
  data.items.add(new File([bytes], name));
});
const options = {bubbles: true, cancelable: true};
if (how === "paste") {
  document.body.dispatchEvent(new ClipboardEvent("paste", {...options, clipboardData: data}));
} else {
  const zone = document.getElementById("drop");
  for (const type of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(type, {...options, dataTransfer: data}));
  }
}
"""

# Runs in the page: every text the upload rows show, in order ("42 % of 3.0 MiB", "stored").
WATCH_QUEUE = """
window.queueTexts = [];
new MutationObserver(() => {
  for (const state of document.querySelectorAll("#queue .qstate")) {
    window.queueTexts.push(state.textContent);
  }
}).observe(document.getElementById("queue"), {subtree: true, childList: true,
                                                characterData: true});
"""


def test_demo_page_in_chromium(
    browser: Any, backend: Backend, free_tcp_port: int, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_for(check: Any, what: str) -> Any:
        return WebDriverWait(browser, WAIT, 0.05).until(lambda _: check(), message=what)

    def percent(text: str) -> int:
        """The percentage a queue row shows (``'42 % of 4.0 MiB'``), or -1."""
        match = re.fullmatch(r"(\d+) % of .*", text)
        return int(match[1]) if match else -1

    def cards() -> list[str]:
        # One script call: the page may replace the cards between two WebDriver calls.
        names = "return [...document.querySelectorAll('#gallery .name')].map(e => e.textContent)"
        return list(browser.execute_script(names))

    sunset_png, waves_png = png(400, 300, sunset), png(240, 400, waves)  # landscape, portrait
    notes = b"Shopping list\n- bread\n- milk\n"
    pdf = b"%PDF-1.4\n% not much of a document\n%%EOF\n"
    picked = tmp_path / "picked"
    picked.mkdir()
    (picked / "sunset.png").write_bytes(sunset_png)
    (picked / "notes.txt").write_bytes(notes)

    with demo_server(free_tcp_port, backend.environ) as base:
        backend.allow(base)
        browser.get(base + "/")
        assert browser.title == "async_store demo"
        assert "Nothing yet" in browser.find_element(By.ID, "empty").text
        where = browser.find_element(By.CSS_SELECTOR, ".top p").text
        route = browser.find_element(By.CSS_SELECTOR, ".top .route").text
        if backend.kind == "local":
            assert f"on the local disk, in {backend.store}." in where
            assert route.startswith("Your browser sends each file to this app, ")
        else:
            assert f"in the S3 bucket {backend.bucket}." in where
            assert route.startswith("Your browser sends each file straight to the bucket")
        assert "js" in browser.find_element(By.TAG_NAME, "html").get_attribute("class")
        # With the script, the drop zone is the picker and the Upload button is gone.
        assert not browser.find_element(By.CSS_SELECTOR, "button.submit").is_displayed()
        browser.execute_script(WATCH_QUEUE)

        # Two files from the picker, one of them an image.
        picker = browser.find_element(By.ID, "afile")
        picker.send_keys(f"{picked / 'sunset.png'}\n{picked / 'notes.txt'}")
        wait_for(lambda: sorted(cards()) == ["notes.txt", "sunset.png"], "two cards")
        # One more dropped on the zone, one pasted.
        for how, name, data in (("drop", "waves.png", waves_png), ("paste", "report.pdf", pdf)):
            browser.execute_script(HAND_OVER, how, [name], [base64.b64encode(data).decode()])
        wait_for(lambda: len(cards()) == 4, "four cards")

        # A progress bar per file, each driven by its upload's progress events to 100 %.
        rows = browser.find_elements(By.CSS_SELECTOR, "#queue li")
        names = sorted(row.find_element(By.CLASS_NAME, "qname").text for row in rows)
        assert names == ["notes.txt", "report.pdf", "sunset.png", "waves.png"]
        for row in rows:
            assert "done" in row.get_attribute("class")
            assert row.find_element(By.TAG_NAME, "progress").get_attribute("value") == "100"
            assert row.find_element(By.CLASS_NAME, "qstate").text.startswith("stored · ")
        texts = browser.execute_script("return window.queueTexts")
        assert any(text.startswith("100 % of ") for text in texts), texts

        # Stored, each as a row, each image with its thumbnail variant (a WebP, cropped to 4:3)
        # next to it: the gallery shows those (loaded from the store), icons for the others.
        stored = backend.files()
        made = {key: stored.pop(key) for key in list(stored) if "/_variants/" in key}
        assert stored == {
            "demo/sunset.png": sunset_png,
            "demo/notes.txt": notes,
            "demo/waves.png": waves_png,
            "demo/report.pdf": pdf,
        }
        assert sorted(made) == [
            "demo/_variants/sunset.png/thumb.webp",
            "demo/_variants/waves.png/thumb.webp",
        ]
        assert [image_of(data).format for data in made.values()] == ["WEBP", "WEBP"]
        assert sorted(backend.rows()) == sorted(
            (key.removeprefix("demo/"), len(data), key) for key, data in stored.items()
        )
        thumbs = "#gallery .thumb img"
        loaded = (
            f"return [...document.querySelectorAll('{thumbs}')]"
            ".map(i => [i.naturalWidth, i.naturalHeight, new URL(i.src).pathname])"
        )
        # The portrait 240×400 is cropped to 240×180 (never enlarged to 400×300).
        sized = [[240, 180, "thumb.webp"], [400, 300, "thumb.webp"]]
        wait_for(
            lambda: (
                sorted([w, h, p.rsplit("/", 1)[1]] for w, h, p in browser.execute_script(loaded))
                == sized
            ),
            "two thumbnails",
        )
        # Each links to its original.
        links = "return [...document.querySelectorAll('#gallery a.thumb')].map(a => a.href)"
        originals = {link.split("?")[0].rsplit("/", 1)[1] for link in browser.execute_script(links)}
        assert originals == {"sunset.png", "waves.png", "notes.txt", "report.pdf"}
        # Every thumbnail 4:3, whatever the shape of its picture.
        boxes = (
            "return [...document.querySelectorAll('#gallery .thumb')]"
            ".map(e => [e.offsetWidth, e.offsetHeight])"
        )
        for width, height in browser.execute_script(boxes):
            assert abs(height - width * 3 / 4) <= 1, (width, height)
        icons = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#gallery .kind")]
        assert sorted(icons) == ["PDF", "TXT"]
        assert browser.find_element(By.ID, "count").text == "4 files"
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(tmp_path / "demo.png"))
        if backend.kind == "local" and os.environ.get("DEMO_SCREENSHOT"):
            shutil.copy(tmp_path / "demo.png", os.environ["DEMO_SCREENSHOT"])

        # Open one: the text file, served by the store's route (or presigned, from the bucket).
        browser.find_element(By.LINK_TEXT, "notes.txt").click()
        wait_for(lambda: "Shopping list" in browser.page_source, "the text file")
        assert browser.find_element(By.TAG_NAME, "body").text == notes.decode().strip()
        opened = browser.current_url
        if backend.kind == "local":
            assert opened == f"{base}/uploads/demo/notes.txt"
        else:
            assert opened.startswith(f"{backend.environ['STORE_S3_ENDPOINT_URL']}/")
            assert "Signature=" in opened  # the bucket is private: a presigned link
        browser.back()
        wait_for(lambda: len(cards()) == 4, "the page again")

        # Delete one, without a reload: the card, the row and the file are gone.
        browser.find_element(By.CSS_SELECTOR, "button[title='Delete notes.txt']").click()
        wait_for(lambda: "notes.txt" not in cards(), "the card to go")
        assert browser.find_element(By.ID, "count").text == "3 files"
        assert "notes.txt" not in {row[0] for row in backend.rows()}
        assert sorted(backend.files()) == [
            "demo/_variants/sunset.png/thumb.webp",
            "demo/_variants/waves.png/thumb.webp",
            "demo/report.pdf",
            "demo/sunset.png",
            "demo/waves.png",
        ]
        browser.refresh()
        assert sorted(cards()) == ["report.pdf", "sunset.png", "waves.png"]

        # Cancel one halfway (uploads throttled, so it is seen moving): nothing of it is kept.
        big = picked / "big.bin"
        big.write_bytes(os.urandom(4 * 1024 * 1024))
        throttle = {"offline": False, "latency": 0, "downloadThroughput": -1}
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd(
            "Network.emulateNetworkConditions", {**throttle, "uploadThroughput": 512 * 1024}
        )
        try:
            browser.find_element(By.ID, "afile").send_keys(str(big))
            state = browser.find_element(By.CSS_SELECTOR, "#queue li .qstate")
            wait_for(lambda: 0 < percent(state.text) < 100, "progress under way")
            browser.find_element(By.CSS_SELECTOR, "button[aria-label='Cancel big.bin']").click()
            wait_for(lambda: state.text == "cancelled", "the upload to stop")
        finally:
            browser.execute_cdp_cmd(
                "Network.emulateNetworkConditions", {**throttle, "uploadThroughput": -1}
            )
        stored_now = [
            "demo/_variants/sunset.png/thumb.webp",
            "demo/_variants/waves.png/thumb.webp",
            "demo/report.pdf",
            "demo/sunset.png",
            "demo/waves.png",
        ]
        wait_for(lambda: sorted(backend.files()) == stored_now, "no part of big.bin")
        # Nor in the folder of resumable uploads: cancelling terminates the upload there too.
        wait_for(lambda: list(backend.tus.glob("*/data")) == [], "big.bin's bytes to go")
        assert len(backend.rows()) == 3
        assert sorted(cards()) == ["report.pdf", "sunset.png", "waves.png"]


def s3_environ(tmp_path: Path, endpoint: str, bucket: str, **extra: str) -> dict[str, str]:
    """The demo on S3 through ``endpoint`` (the fault proxy), as a shell would set it."""
    return {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'demo.sqlite'}",
        "STORE_TUS_PATH": str(tmp_path / "tus"),
        "STORE_PROVIDER": "s3",
        "STORE_S3_BUCKET": bucket,
        "STORE_S3_ENDPOINT_URL": endpoint,
        "STORE_S3_REGION": "us-east-1",
        **S3_CREDENTIALS,
        "STORE_S3_MAX_ATTEMPTS": "1",
        **extra,
    }


def empty_bucket(server: SeaweedFS, bucket: str) -> None:
    client = s3_client(server)
    try:
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    finally:
        client.close()


def test_demo_s3_down_shows_why_and_keeps_the_name(
    browser: Any,
    proxy: FaultProxy,
    s3_server: SeaweedFS,
    bucket: str,
    free_tcp_port: int,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    picked = tmp_path / "quarterly-report.pdf"
    picked.write_bytes(b"%PDF-1.4\n%%EOF\n")
    with demo_server(free_tcp_port, s3_environ(tmp_path, proxy.endpoint, bucket)) as base:
        # Through the app (tus): what it says when it cannot store in S3. (Straight to the
        # bucket, the page would find the bucket out of reach itself.)
        browser.get(base + "/?via=tus")
        proxy.down()
        browser.find_element(By.ID, "afile").send_keys(str(picked))
        row = browser.find_element(By.CSS_SELECTOR, "#queue li")
        WebDriverWait(browser, WAIT, 0.05).until(
            lambda _: "failed" in row.get_attribute("class"), message="the upload to fail"
        )
        assert row.find_element(By.CLASS_NAME, "qstate").text == "failed"
        # The library's message, naming the file and the key to check.
        reason = row.find_element(By.CLASS_NAME, "qreason").text
        assert reason.startswith("503 Service Unavailable: cannot reach the S3 endpoint for ")
        assert "quarterly-report.pdf" in reason and "STORE_S3_ENDPOINT_URL" in reason
        # However long the message, the file's name stays whole on its row.
        name = row.find_element(By.CLASS_NAME, "qname")
        assert name.text == "quarterly-report.pdf"
        fits = "const e = arguments[0]; return e.clientWidth > 0 && e.scrollWidth <= e.clientWidth"
        assert browser.execute_script(fits, name)
        assert browser.find_elements(By.CSS_SELECTOR, "#gallery .card") == []
        proxy.up()
    empty_bucket(s3_server, bucket)


def test_demo_background_card_says_uploading_until_delivered(
    browser: Any,
    proxy: FaultProxy,
    s3_server: SeaweedFS,
    bucket: str,
    free_tcp_port: int,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_for(check: Any, what: str) -> Any:
        return WebDriverWait(browser, WAIT, 0.05).until(lambda _: check(), message=what)

    picture = png(400, 300, sunset)
    picked = tmp_path / "sunset.png"
    picked.write_bytes(picture)
    background = {
        "STORE_BACKGROUND": "true",
        "STORE_BACKGROUND_BACKOFF": "0.05",
        "STORE_BACKGROUND_MAX_BACKOFF": "0.2",
    }
    environ = s3_environ(tmp_path, proxy.endpoint, bucket, **background)
    with demo_server(free_tcp_port, environ) as base:
        # Background uploads are of the bytes the app receives: through the app (tus).
        browser.get(base + "/?via=tus")
        browser.execute_script(WATCH_QUEUE)
        proxy.down()  # delivery waits for S3, the file for delivery
        browser.find_element(By.ID, "afile").send_keys(str(picked))
        card = "#gallery .card"
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, card), "the card")
        state = browser.find_element(By.CSS_SELECTOR, "#queue li .qstate")
        wait_for(lambda: state.text.startswith("uploading · "), "the row to say uploading")
        shown = browser.find_element(By.CSS_SELECTOR, card)
        assert shown.get_attribute("data-status") == "uploading"
        assert "uploading to the store" in shown.text
        assert shown.find_elements(By.TAG_NAME, "img") == []  # no broken thumbnail
        assert shown.find_elements(By.TAG_NAME, "a") == []  # no link to a 404

        proxy.up()
        thumbs = "return [...document.querySelectorAll('#gallery img')].map(i => i.naturalWidth)"
        wait_for(lambda: browser.execute_script(thumbs) == [400], "the delivered thumbnail")
        assert browser.find_element(By.CSS_SELECTOR, card).get_attribute("data-status") == "stored"
        wait_for(lambda: state.text.startswith("stored · "), "the row to say stored")
        texts = [t.split(" · ")[0] for t in browser.execute_script("return window.queueTexts")]
        assert texts.index("uploading") < texts.index("stored"), texts
        # Reloaded, the page says the same: the file is in the bucket.
        browser.refresh()
        wait_for(lambda: browser.execute_script(thumbs) == [400], "the thumbnail after a reload")
    empty_bucket(s3_server, bucket)


# --- on S3: straight to the bucket -------------------------------------------------------------


def test_demo_on_s3_sends_the_files_straight_to_the_bucket(
    browser: Any,
    signed_s3_server: SeaweedFS,
    signed_bucket: str,
    free_tcp_port: int,
    tmp_path: Path,
) -> None:
    """The page on S3, behind a proxy that keeps every byte the browser sends the app: a small
    image goes to the bucket in one presigned POST, 12 MiB in three 5 MiB parts, and the app
    confirms both (the image with its thumbnail). The app is sent requests to sign and to
    confirm, a few KiB: never the files. A CORS rule that does not let the page in is a failed
    line saying so."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_for(check: Any, what: str, seconds: float = WAIT) -> Any:
        return WebDriverWait(browser, seconds, 0.05).until(lambda _: check(), message=what)

    def cards() -> list[str]:
        names = "return [...document.querySelectorAll('#gallery .name')].map(e => e.textContent)"
        return list(browser.execute_script(names))

    def objects() -> dict[str, bytes]:
        listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return {
            item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for item in listing
        }

    picture = png(400, 300, sunset)
    (tmp_path / "sunset.png").write_bytes(picture)
    big = os.urandom(12 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "notes.txt").write_bytes(b"kept out\n")
    server, bucket = signed_s3_server, signed_bucket
    client = s3_client(server)
    pipe = Pipe(free_tcp_port, rate=float(2**40), keep=True)
    assert pipe.kept is not None
    kept = pipe.kept
    page = f"http://127.0.0.1:{pipe.port}"
    # Objects under a prefix: the storage's STORE_PATH.
    environ = s3_environ(tmp_path, server.endpoint, bucket, STORE_PATH="media")
    try:
        with demo_server(free_tcp_port, environ):
            # A rule for another site: the browser keeps the page's upload from the bucket.
            allow_page(client, bucket, "https://elsewhere.example")
            browser.get(page + "/")
            route = browser.find_element(By.CSS_SELECTOR, ".top .route").text
            assert route.startswith("Your browser sends each file straight to the bucket: ")
            browser.find_element(By.ID, "afile").send_keys(str(tmp_path / "notes.txt"))
            row = browser.find_element(By.CSS_SELECTOR, "#queue li")
            wait_for(lambda: "failed" in row.get_attribute("class"), "the upload to fail", 30)
            reason = row.find_element(By.CLASS_NAME, "qreason").text
            assert f"its CORS rule must let {page} in" in reason, reason
            assert cards() == []
            before = len(kept)

            allow_page(client, bucket, page)
            picker = browser.find_element(By.ID, "afile")
            picker.send_keys(f"{tmp_path / 'sunset.png'}\n{tmp_path / 'big.bin'}")
            wait_for(lambda: sorted(cards()) == ["big.bin", "sunset.png"], "two cards", 30)
            states = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#queue .qstate")]
            small = f"stored · {len(picture) / 1024:.1f} KiB"
            assert sorted(states) == ["failed", "stored · 12.0 MiB", small], states
            thumbs = (
                "return [...document.querySelectorAll('#gallery img')].map(i => i.naturalWidth)"
            )
            wait_for(lambda: browser.execute_script(thumbs) == [400], "the thumbnail")
            assert "thumb.webp" in browser.find_element(
                By.CSS_SELECTOR, "#gallery img"
            ).get_attribute("src")
    finally:
        pipe.close()

    # In the bucket under the storage's prefix, at their names; nothing of theirs left staged.
    stored = objects()
    # The refused page's file did arrive, staged: a form POST is sent without a preflight (the
    # page could not read the answer). Never confirmed, store cleanup removes it.
    staged = [key for key in stored if key.startswith("media/.direct/")]
    assert [key.rsplit("/", 1)[1] for key in staged] == ["notes.txt"], staged
    del stored[staged[0]]
    thumb = stored.pop("media/demo/_variants/sunset.png/thumb.webp")
    assert image_of(thumb).format == "WEBP"
    assert stored == {"media/demo/sunset.png": picture, "media/demo/big.bin": big}
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    rows = paths(query(tmp_path / "demo.sqlite", "SELECT name, size, file FROM gallery"))
    assert sorted(rows) == [
        ("big.bin", len(big), "demo/big.bin"),
        ("sunset.png", len(picture), "demo/sunset.png"),
    ]
    # What the app was sent for the two: requests to sign and to confirm, no file's bytes.
    sent = bytes(kept[before:])
    # Request lines, wherever they are: a request may follow another's body on the connection.
    lines = re.findall(rb"([A-Z]+) (/[^ ?]*)(?:\?[^ ]*)? HTTP/1\.1\r\n", sent)
    asked = sorted(
        (method.decode(), re.sub(r"/s3/multipart/[^/]+", "/s3/multipart/ID", path.decode()))
        for method, path in lines
        if not path.startswith((b"/static/", b"/favicon"))
    )
    assert asked == [
        ("GET", "/direct-uploads/s3/multipart/ID/1"),
        ("GET", "/direct-uploads/s3/multipart/ID/2"),
        ("GET", "/direct-uploads/s3/multipart/ID/3"),
        ("GET", "/direct-uploads/s3/params"),
        ("POST", "/confirm"),
        ("POST", "/confirm"),
        ("POST", "/direct-uploads/s3/multipart"),
        ("POST", "/direct-uploads/s3/multipart/ID/complete"),
    ], asked
    assert len(sent) < 64 * 1024, len(sent)
    assert pipe.sent < 256 * 1024, pipe.sent  # the whole test, page loads included
    client.close()


# --- the resumable path: a dropped connection, a killed server --------------------------------


class Pipe:
    """A loopback TCP proxy in front of the demo, as a network would be: it passes at most
    ``rate`` bytes a second towards the server (so a test sees an upload under way), counts
    them, and can cut every connection at once (:meth:`cut`). While the server is down, a
    connection it accepts is closed at once, as a refused one would be."""

    def __init__(self, upstream: int, rate: float, keep: bool = False) -> None:
        self.upstream = upstream
        self.rate = rate
        #: Bytes passed from the browser to the server, over every connection.
        self.sent = 0
        #: Those bytes themselves, with ``keep``: the requests the server was sent.
        self.kept = bytearray() if keep else None
        self._lock = threading.Lock()
        self._next = time.monotonic()  # when the next byte towards the server may leave
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, upload: bool) -> None:
        try:
            while data := source.recv(64 * 1024):
                if upload:
                    with self._lock:
                        self._next = max(self._next, time.monotonic()) + len(data) / self.rate
                        wait = self._next - time.monotonic()
                        self.sent += len(data)
                        if self.kept is not None:
                            self.kept += data
                    time.sleep(max(0.0, wait))
                target.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source, target)

    def _close(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with self._lock:
                self._open.discard(sock)
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> None:
        """Every connection dropped, both ways, as a network that goes away."""
        with self._lock:
            live = list(self._open)
        self._close(*live)

    def close(self) -> None:
        self._listener.close()
        self.cut()


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def partial_upload(spool: Path) -> tuple[int, int]:
    """(offset, length) of the one upload waiting in the tus folder ``spool``: the bytes the
    server has counted so far (its ``info.json``), (0, 0) before it is created."""
    for info in spool.glob("*/info.json"):
        with suppress(FileNotFoundError, ValueError):  # replaced while read: look again
            state = json.loads(info.read_text())
            return int(state["offset"]), int(state["length"])
    return 0, 0


def test_demo_upload_resumes_after_a_drop_and_a_server_restart(
    browser: Any, free_tcp_port: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """64 MiB through the page's resumable path, at 12 MiB/s: the connection is cut once a
    few chunks have arrived, the server SIGKILLed at half way and started again on its port.
    The page says it is reconnecting, carries on from what the server had, and stores the file
    whole, having sent it about once."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_for(check: Any, what: str, seconds: float = WAIT) -> Any:
        return WebDriverWait(browser, seconds, 0.02).until(lambda _: check(), message=what)

    def percents(texts: list[str]) -> list[int]:
        return [int(m[1]) for t in texts if (m := re.fullmatch(r"(\d+) % of .*", t))]

    size = 64 * 1024 * 1024
    source = tmp_path / "big.bin"
    with source.open("wb") as f:
        for _ in range(size // (1024 * 1024)):
            f.write(os.urandom(1024 * 1024))
    backend = Backend("local", tmp_path, request)
    pipe = Pipe(free_tcp_port, rate=12 * 1024 * 1024)
    try:
        with demo_process(free_tcp_port, backend.environ) as first:
            browser.get(f"http://127.0.0.1:{pipe.port}/")
            browser.execute_script(WATCH_QUEUE)
            browser.find_element(By.ID, "afile").send_keys(str(source))
            state = browser.find_element(By.CSS_SELECTOR, "#queue li .qstate")

            # The connection drops after two chunks: the page carries on over a new one.
            wait_for(lambda: partial_upload(backend.tus)[0] >= 10 * 1024 * 1024, "two chunks")
            pipe.cut()
            # The server is killed half way (what it wrote past its count is cut next time).
            wait_for(lambda: partial_upload(backend.tus)[0] >= size // 2, "half the file")
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            offset, length = partial_upload(backend.tus)
            assert 0 < offset < size and length == size, (offset, length)
            shown_before = len(browser.execute_script("return window.queueTexts"))
            # Nothing answers: the page says so, and keeps trying until the server is back.
            wait_for(lambda: state.text == "reconnecting…", "the page to say it reconnects")

            with demo_process(free_tcp_port, backend.environ):
                wait_for(lambda: state.text.startswith("stored · "), "the upload to end", 60)
                texts = browser.execute_script("return window.queueTexts")
                assert state.text == "stored · 64.0 MiB"
                row = browser.find_element(By.CSS_SELECTOR, "#queue li")
                assert "done" in row.get_attribute("class")
                cards = browser.find_elements(By.CSS_SELECTOR, "#gallery .name")
                assert [card.text for card in cards] == ["big.bin"]
    finally:
        pipe.close()

    # From where the killed server had stopped: never back below its count, never from 0.
    after = percents(texts[shown_before:])
    assert after and min(after) >= offset * 100 // size, after
    # Stored whole, with its row; sent about once (a chunk or two again, not the whole file).
    assert sha256(backend.store / "demo" / "big.bin") == sha256(source)
    assert backend.rows() == [("big.bin", size, "demo/big.bin")]
    assert size <= pipe.sent < 1.5 * size, pipe.sent
