"""`wan-rt api` and `wan-rt worker`: the OpenAI Videos API over a durable job queue (docs/serving.md).

- `jobs`: what a job holds, the OpenAI `size` / `seconds` mapping onto the engines, the `Video` object;
- `requests`: a POST /v1/videos body (JSON or multipart) checked into a job, with the CLI's one-line errors;
- `queue` (+ `sqlite_queue`, `postgres_queue`): the store, claims with leases, exactly-once completion;
- `worker`: the loop that claims a job, runs the Pipeline with heartbeats, and writes the MP4 and thumbnail;
- `app`: the HTTP routes (FastAPI); `auth`, `metrics`: API keys and Prometheus; `server`: `wan-rt api`.

The HTTP and database libraries (fastapi, uvicorn, psycopg, prometheus-client) come with `pip install
wan-deploy[serve]` and are imported only here, never by `wan-rt generate`.
"""
