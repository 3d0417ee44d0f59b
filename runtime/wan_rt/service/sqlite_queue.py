"""The job queue in one SQLite file: the default of `wan-rt api` on one machine (workers on that machine only)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from wan_rt.errors import WanError
from wan_rt.service.queue import JobQueue


class SqliteQueue(JobQueue):
    kind = "sqlite"
    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"
    blob_type = "BLOB"
    seq_type = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise WanError(f"cannot open the job queue {self.path}: folder {self.path.parent} does not exist")
        try:
            # autocommit (isolation_level None): each statement is its own transaction; WAL lets readers run
            # beside the one writer; busy_timeout makes the API and the workers wait for each other's writes
            self.connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=NORMAL")
            for statement in self.schema():
                self.connection.execute(statement)
        except sqlite3.Error as exc:
            raise WanError(f"cannot open the job queue {self.path}: {exc}") from None

    def _execute(self, sql: str, params: tuple = ()) -> tuple[list, int]:
        cursor = self.connection.execute(sql, params)
        rows = cursor.fetchall()
        return rows, cursor.rowcount

    def close(self) -> None:
        self.connection.close()

    def __str__(self) -> str:
        return f"sqlite:///{self.path}"
