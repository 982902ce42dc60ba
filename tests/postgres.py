"""A real PostgreSQL for the tests (Debian's ``postgresql``), on a free loopback port.

``initdb`` and ``pg_ctl`` come from /usr/lib/postgresql/<version>/bin. PostgreSQL refuses to
run as root: as root, the data folder belongs to the ``postgres`` user and the server runs
under ``runuser``. Stopped with ``pg_ctl stop -m immediate`` at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

from tests.seaweed import free_port

__all__ = ["PostgreSQL", "find_bin"]


def find_bin() -> str | None:
    """The newest PostgreSQL server's bin folder, or None if none is installed."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    return os.path.dirname(found[-1]) if found else None


class PostgreSQL:
    def __init__(self, bin_dir: str) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="async_store-pg-")
        self.data = os.path.join(self.directory, "data")
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        command = [os.path.join(self.bin_dir, args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        if self.as_root:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "-l",
            os.path.join(self.directory, "log"),
            "start",
        )

    def url(self, driver: str, database: str = "postgres") -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
