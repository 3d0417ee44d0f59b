"""The HTTP routes of `wan-rt api`: OpenAI's Videos API (what the official `openai` SDK calls), /health, /metrics.

Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with one line of message.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from wan_rt.service.auth import KeyCheck
from wan_rt.service.metrics import ApiMetrics
from wan_rt.service.requests import RequestError, build_job, decode_data_url

log = logging.getLogger("wan_rt.service")
VARIANTS = {"video": ("output", "video/mp4", "mp4"), "thumbnail": ("thumbnail", "image/webp", "webp")}
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error"}


@dataclass
class ApiSettings:
    model_name: str
    outputs: Path
    scratch: Path  # uploads are checked through files here
    keys: KeyCheck
    max_queued: int = 100
    max_upload_bytes: int = 20 * 2**20
    poll_after_ms: int = 1000  # what the SDK's poll() waits between retrieves (header openai-poll-after-ms)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def create_app(settings: ApiSettings, queue, pipeline, health=None) -> FastAPI:
    """`pipeline`: a Pipeline over the served engines, used only to check requests (no engine opened);
    `health()`: extra fields for /health (the embedded workers)."""
    app = FastAPI(title="wan-rt api", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = ApiMetrics(queue)
    poll_header = {"openai-poll-after-ms": str(settings.poll_after_ms)}

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message)

    @app.exception_handler(Exception)
    async def broken(request: Request, exc: Exception):  # a bug: still one line in OpenAI's shape (logged in full)
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "other")
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.seconds.labels(route).observe(time.perf_counter() - started)
        return response

    def owner(request: Request) -> str:
        found = settings.keys.owner(request.headers.get("authorization"))
        if found is None:
            raise RequestError(401, "invalid API key: send Authorization: Bearer KEY with a key this server was "
                                    "started with (--api-key)", code="invalid_api_key")
        return found

    async def job_of(request: Request, video_id: str):
        job = await run_in_threadpool(queue.get, video_id, owner(request))
        if job is None:  # another key's job is "not found" too: its existence is not shown
            raise RequestError(404, f"no video {video_id!r}", "video_id", "video_not_found")
        return job

    @app.post("/v1/videos")
    async def create(request: Request):
        who = owner(request)
        body, image, from_form = await _read_body(request, settings.max_upload_bytes)
        job = await run_in_threadpool(build_job, body, image, pipeline, who, settings.model_name, from_form,
                                      settings.scratch)
        if not await run_in_threadpool(queue.submit, job, settings.max_queued):
            raise RequestError(429, f"the queue is full ({settings.max_queued} jobs waiting); retry later",
                               code="queue_full")
        return JSONResponse(job.video_object(), headers=poll_header)

    @app.get("/v1/videos")
    async def list_videos(request: Request, after: str | None = None, limit: int = 20, order: str = "desc"):
        who = owner(request)
        if order not in ("asc", "desc"):
            raise RequestError(400, f"order must be asc or desc, got {order!r}", "order")
        if not 1 <= limit <= 100:
            raise RequestError(400, f"limit must be 1..100, got {limit}", "limit")
        if after is not None and await run_in_threadpool(queue.get, after, who) is None:
            raise RequestError(400, f"after: no video {after!r}", "after")
        jobs, more = await run_in_threadpool(queue.list, who, after, limit, order)
        data = [job.video_object() for job in jobs]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    @app.get("/v1/videos/{video_id}")
    async def retrieve(request: Request, video_id: str):
        return JSONResponse((await job_of(request, video_id)).video_object(), headers=poll_header)

    @app.delete("/v1/videos/{video_id}")
    async def delete(request: Request, video_id: str):
        job = await run_in_threadpool(queue.delete, video_id, owner(request))
        if job is None:
            raise RequestError(404, f"no video {video_id!r}", "video_id", "video_not_found")
        for name in (job.output, job.thumbnail):  # a running job's worker removes its own files when it stops
            if name:
                (settings.outputs / name).unlink(missing_ok=True)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @app.get("/v1/videos/{video_id}/content")
    async def content(request: Request, video_id: str, variant: str = "video"):
        job = await job_of(request, video_id)
        if variant not in VARIANTS:
            raise RequestError(400, f"variant {variant!r} is not available; variants: {', '.join(VARIANTS)}",
                               "variant")
        if job.status != "completed":
            raise RequestError(409 if job.status != "failed" else 400,
                               f"video {video_id} is {job.status}; its content is there once it is completed",
                               "video_id", "video_not_ready")
        field, media_type, suffix = VARIANTS[variant]
        path = settings.outputs / getattr(job, field)
        if not path.is_file():
            raise RequestError(404, f"the {variant} of {video_id} is missing from the outputs folder "
                                    f"{settings.outputs} (removed by hand, or a worker writing elsewhere)",
                               "video_id", "content_missing")
        return FileResponse(path, media_type=media_type, filename=f"{video_id}.{suffix}")

    @app.post("/v1/videos/{video_id}/remix")
    async def remix(request: Request, video_id: str):
        owner(request)
        raise RequestError(400, "remix is not supported by wan-rt api: create a new video (same seed and prompt "
                                "changes give a related one)", code="unsupported")

    @app.get("/health")
    async def health_check():
        counts = await run_in_threadpool(queue.counts)
        return {"status": "ok", "queue": queue.kind, "model": settings.model_name, "jobs": counts,
                **(health() if health else {})}

    @app.get("/metrics")
    async def prometheus():
        data = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    return app


async def _read_body(request: Request, max_upload: int) -> tuple[dict, bytes | None, bool]:
    """(fields, image bytes or None, whether the fields came as form text) of a JSON or multipart body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    size = int(request.headers.get("content-length") or 0)
    if size > max_upload + 2**20:
        raise RequestError(413, f"request body of {size / 2**20:.1f} MB is over the {max_upload / 2**20:g} MB upload "
                                f"limit (--max-upload-mb)", "input_reference", "upload_too_large")
    if kind == "application/json":
        try:
            body = await request.json()
        except ValueError as exc:
            raise RequestError(400, f"body is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise RequestError(400, "body must be a JSON object")
        reference = body.pop("input_reference", None)
        image = None
        if isinstance(reference, dict):
            image = _image_reference(reference)
        elif reference is not None:
            raise RequestError(400, "input_reference must be an uploaded file (multipart) or {\"image_url\": DATA_URL}",
                               "input_reference")
        return body, _checked(image, max_upload), False
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise RequestError(415 if kind else 400, f"content type {kind or 'missing'}: send JSON or multipart/form-data")
    try:
        form = await request.form(max_files=1, max_fields=64)
    except Exception as exc:  # starlette's MultiPartException and the parser's errors: a malformed body
        raise RequestError(400, f"malformed form body: {exc}") from None
    body, image, reference = {}, None, {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != "input_reference":
                raise RequestError(400, f"file field {key!r}: only input_reference takes a file", key)
            image = await value.read(max_upload + 1)
        elif key.startswith("input_reference[") and key.endswith("]"):
            reference[key[len("input_reference["):-1]] = value
        elif key.endswith("[]"):
            body.setdefault(key[:-2], []).append(value)
        else:
            body[key] = value
    if reference:
        image = _image_reference(reference)
    return body, _checked(image, max_upload), True


def _image_reference(reference: dict) -> bytes:
    if reference.get("image_url"):
        return decode_data_url(reference["image_url"])
    raise RequestError(400, "input_reference: only image_url (a data URL) or an uploaded file is supported here "
                            "(no file ids)", "input_reference")


def _checked(image: bytes | None, max_upload: int) -> bytes | None:
    if image is not None and len(image) > max_upload:
        raise RequestError(413, f"input_reference is over the {max_upload / 2**20:g} MB upload limit "
                                f"(--max-upload-mb)", "input_reference", "upload_too_large")
    if image is not None and not image:
        raise RequestError(400, "input_reference is an empty file", "input_reference")
    return image
