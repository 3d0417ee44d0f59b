"""The durable job queue: one `jobs` table in SQLite (one machine) or PostgreSQL (many), the same SQL on both.

Claims are atomic (one UPDATE ... RETURNING; PostgreSQL picks the row with FOR UPDATE SKIP LOCKED) and give the
worker a lease: a token (worker, attempt) and an expiry it renews with heartbeats. Every later write of the worker
(progress, completion, failure, release) names the token, so only the current holder's lands: a job whose lease
expired and was claimed again can complete once, by its new holder. Times are the database's clock (machines'
clocks may differ).

    queue = open_queue("postgresql://host/db", state_dir)    # or None: SQLite in state_dir/jobs.db
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

from wan_rt.errors import WanError
from wan_rt.service.jobs import Job

COLUMNS = ("id", "owner", "status", "progress", "created_at", "started_at", "completed_at", "model", "prompt", "size",
           "seconds", "params", "error_code", "error_message", "worker", "attempt", "lease_until", "output",
           "thumbnail", "timings")
_SELECT = ", ".join(COLUMNS)
_HOLDER = "id = ? AND worker = ? AND attempt = ? AND status = 'in_progress'"  # the lease token


class JobQueue:
    """The queue's operations; subclasses give the connection, the dialect and the schema."""
    kind = ""
    now_sql = ""  # the database's clock in unix seconds
    skip_locked = ""  # row locking for the claim's pick
    blob_type = ""
    seq_type = ""  # an auto-increment primary key: the queue's order

    def __init__(self):
        self._lock = threading.Lock()  # one connection per queue object; the API's threads and a worker's
        # heartbeat thread share it

    # -- the dialect ---------------------------------------------------------------------------------------
    def _execute(self, sql: str, params: tuple = ()) -> tuple[list, int]:
        """(rows, rowcount) of one statement, committed."""
        raise NotImplementedError

    def run(self, sql: str, params: tuple = ()) -> tuple[list, int]:
        with self._lock:
            return self._execute(sql.replace("NOW()", self.now_sql), params)

    def schema(self) -> list[str]:
        return [f"""CREATE TABLE IF NOT EXISTS jobs (
            seq {self.seq_type}, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL, status TEXT NOT NULL,
            progress INTEGER NOT NULL DEFAULT 0, created_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION, completed_at DOUBLE PRECISION, model TEXT NOT NULL, prompt TEXT NOT NULL,
            size TEXT NOT NULL, seconds TEXT NOT NULL, params TEXT NOT NULL, image {self.blob_type},
            error_code TEXT, error_message TEXT, worker TEXT, attempt INTEGER NOT NULL DEFAULT 0,
            lease_until DOUBLE PRECISION, output TEXT, thumbnail TEXT, timings TEXT NOT NULL DEFAULT '{{}}')""",
                "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq)",
                "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq)"]

    def close(self) -> None:
        pass

    # -- the API's side ------------------------------------------------------------------------------------
    def submit(self, job: Job, max_queued: int) -> bool:
        """Store a new job; False (nothing stored) when `max_queued` jobs already wait."""
        names = ("id", "owner", "status", "progress", "created_at", "model", "prompt", "size", "seconds", "params",
                 "image", "timings")
        values = (job.id, job.owner, "queued", 0, job.created_at, job.model, job.prompt, job.size, job.seconds,
                  job.params_json(), job.image, "{}")
        slots = ", ".join(f"CAST(? AS {self.blob_type})" if name == "image" else "?" for name in names)
        _, count = self.run(f"INSERT INTO jobs ({', '.join(names)}) SELECT {slots} "
                            f"WHERE (SELECT COUNT(*) FROM jobs WHERE status = 'queued') < ?", (*values, max_queued))
        return count == 1

    def get(self, job_id: str, owner: str) -> Job | None:
        rows, _ = self.run(f"SELECT {_SELECT} FROM jobs WHERE id = ? AND owner = ?", (job_id, owner))
        return _job(rows[0]) if rows else None

    def list(self, owner: str, after: str | None, limit: int, order: str) -> tuple[list[Job], bool]:
        """A page of the owner's jobs by submission order ("asc" | "desc"), after job `after`; (jobs, has_more)."""
        where, params = "owner = ?", [owner]
        if after is not None:
            where += f" AND seq {'>' if order == 'asc' else '<'} (SELECT seq FROM jobs WHERE id = ? AND owner = ?)"
            params += [after, owner]
        rows, _ = self.run(f"SELECT {_SELECT} FROM jobs WHERE {where} ORDER BY seq {order.upper()} LIMIT ?",
                           (*params, limit + 1))
        return [_job(row) for row in rows[:limit]], len(rows) > limit

    def delete(self, job_id: str, owner: str) -> Job | None:
        """Remove a job (a running one stops at its worker's next heartbeat); the removed job, for its files."""
        rows, _ = self.run(f"DELETE FROM jobs WHERE id = ? AND owner = ? RETURNING {_SELECT}", (job_id, owner))
        return _job(rows[0]) if rows else None

    def counts(self) -> dict[str, int]:
        rows, _ = self.run("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        return {status: int(count) for status, count in rows}

    def stage_seconds(self) -> dict[str, tuple[float, int]]:
        """Seconds per stage over the completed jobs: stage -> (sum, count)."""
        rows, _ = self.run("SELECT timings FROM jobs WHERE status = 'completed'")
        totals: dict[str, tuple[float, int]] = {}
        for (text,) in rows:
            for stage, seconds in json.loads(text or "{}").items():
                total, count = totals.get(stage, (0.0, 0))
                totals[stage] = (total + float(seconds), count + 1)
        return totals

    def requeue_all_running(self) -> int:
        """Every in-progress job back to queued (SQLite: the API starting owns every worker of its machine)."""
        _, count = self.run("UPDATE jobs SET status = 'queued', worker = NULL, lease_until = NULL, progress = 0 "
                            "WHERE status = 'in_progress'")
        return count

    # -- the worker's side ---------------------------------------------------------------------------------
    def claim(self, worker: str, lease_s: float, max_attempts: int) -> Job | None:
        """The oldest queued job, or one whose lease expired, now leased to `worker`; None when there is none.
        A job claimed `max_attempts` times whose lease expired again fails instead of running again."""
        self.run("UPDATE jobs SET status = 'failed', error_code = 'worker_lost', completed_at = NOW(), "
                 "error_message = 'the worker running this job stopped without finishing it (claimed ' || attempt || "
                 "' times; killed, out of memory or lost); submit it again or check the workers'' logs', worker = NULL "
                 "WHERE status = 'in_progress' AND lease_until < NOW() AND attempt >= ?", (max_attempts,))
        claimable = "(status = 'queued' OR (status = 'in_progress' AND lease_until < NOW()))"
        rows, _ = self.run(
            f"UPDATE jobs SET status = 'in_progress', worker = ?, attempt = attempt + 1, progress = 0, "
            f"lease_until = NOW() + ?, started_at = COALESCE(started_at, NOW()) "
            f"WHERE {claimable} AND id = (SELECT id FROM jobs WHERE {claimable} ORDER BY seq LIMIT 1"
            f"{self.skip_locked}) RETURNING {_SELECT}, image", (worker, lease_s))
        if not rows:
            return None
        job = _job(rows[0][:-1])
        job.image = bytes(rows[0][-1]) if rows[0][-1] is not None else None
        return job

    def heartbeat(self, job: Job, progress: int, lease_s: float) -> bool:
        """Renew the lease and store the progress; False when the lease is gone (deleted or claimed again)."""
        _, count = self.run(f"UPDATE jobs SET lease_until = NOW() + ?, progress = ? WHERE {_HOLDER}",
                            (lease_s, progress, job.id, job.worker, job.attempt))
        return count == 1

    def complete(self, job: Job, output: str, thumbnail: str, timings: dict) -> bool:
        _, count = self.run(f"UPDATE jobs SET status = 'completed', progress = 100, completed_at = NOW(), output = ?, "
                            f"thumbnail = ?, timings = ?, lease_until = NULL WHERE {_HOLDER}",
                            (output, thumbnail, json.dumps(timings), job.id, job.worker, job.attempt))
        return count == 1

    def fail(self, job: Job, code: str, message: str, timings: dict) -> bool:
        _, count = self.run(f"UPDATE jobs SET status = 'failed', completed_at = NOW(), error_code = ?, "
                            f"error_message = ?, timings = ?, lease_until = NULL WHERE {_HOLDER}",
                            (code, message, json.dumps(timings), job.id, job.worker, job.attempt))
        return count == 1

    def release(self, job: Job) -> bool:
        """Back to the queue now (the worker is stopping), for another worker to run from the start."""
        _, count = self.run(f"UPDATE jobs SET status = 'queued', worker = NULL, lease_until = NULL, progress = 0 "
                            f"WHERE {_HOLDER}", (job.id, job.worker, job.attempt))
        return count == 1


def _job(row) -> Job:
    data = dict(zip(COLUMNS, row))
    data["params"] = json.loads(data["params"])
    data["timings"] = json.loads(data["timings"] or "{}")
    return Job(**data)


def open_queue(url: str | None, state_dir: Path | None) -> JobQueue:
    """PostgreSQL for a postgresql:// URL, else SQLite in `state_dir`/jobs.db (a sqlite:///PATH URL names the file)."""
    if url and url.startswith(("postgresql://", "postgres://")):
        from wan_rt.service.postgres_queue import PostgresQueue

        return PostgresQueue(url)
    from wan_rt.service.sqlite_queue import SqliteQueue

    if url:
        if not url.startswith("sqlite:///"):
            raise WanError(f"--queue {url!r} is neither postgresql://USER@HOST:PORT/DB nor sqlite:///PATH")
        return SqliteQueue(Path(url[len("sqlite:///"):]))
    if state_dir is None:
        raise WanError("give --queue postgresql://... or --state DIR (the SQLite queue's folder)")
    return SqliteQueue(Path(state_dir) / "jobs.db")
