"""The job queue in PostgreSQL (psycopg 3): one queue for API servers and workers on many machines."""
from __future__ import annotations

import logging
import re

from wan_rt.errors import WanError
from wan_rt.service.queue import JobQueue

log = logging.getLogger("wan_rt.service")
_SCHEMA_LOCK = 0x77616E  # pg_advisory_lock key: processes starting together create the table once


class PostgresQueue(JobQueue):
    kind = "postgresql"
    now_sql = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    skip_locked = " FOR UPDATE SKIP LOCKED"  # concurrent claims pick different rows instead of waiting
    blob_type = "BYTEA"
    seq_type = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self.connection = self._connect()
        with self.connection.transaction():
            self.connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in self.schema():
                self.connection.execute(statement)

    def _connect(self):
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise WanError(f"cannot connect to the job queue {_redacted(self.url)}: {str(exc).strip().splitlines()[0]}"
                           f"; check the URL, that PostgreSQL runs there and accepts this user") from None

    def _execute(self, sql: str, params: tuple = ()) -> tuple[list, int]:
        import psycopg

        sql = sql.replace("?", "%s")
        for attempt in (1, 2):
            try:
                cursor = self.connection.execute(sql, params)
                return (cursor.fetchall() if cursor.description else []), cursor.rowcount
            except psycopg.OperationalError as exc:  # the server restarted or the network dropped: reconnect once
                if attempt == 2:
                    raise WanError(f"lost the job queue {_redacted(self.url)}: {str(exc).strip()}") from None
                log.warning("job queue connection lost (%s); reconnecting", str(exc).strip())
                self.connection.close()
                self.connection = self._connect()

    def close(self) -> None:
        self.connection.close()

    def __str__(self) -> str:
        return _redacted(self.url)


def _redacted(url: str) -> str:
    """The URL without its password (logs and errors)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
