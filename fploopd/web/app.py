"""The web page and its JSON API (FastAPI: the OpenAPI description is at /openapi.json).

Every route reads the journal through a connection of its own (read-only for looking) and changes
jobs through ``fploopd.daemon.control``, the commands' code. Files are found through the journal
(a job's id or name, then where its folder is), never by joining a request's text to a path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from fploopd import __version__
from fploopd.daemon import control
from fploopd.daemon.deliver import PREVIEW_FALLBACK, PREVIEW_FILE
from fploopd.daemon.journal import Job, JobState, Journal
from fploopd.daemon.layout import Layout
from fploopd.errors import FploopdError, InputError
from fploopd.web import guard
from fploopd.web.server import WebAddress
from fploopd.web.uploads import max_body, submit_upload

if TYPE_CHECKING:
    from fploopd.daemon.supervisor import Supervisor

HERE = Path(__file__).parent
# /healthz: the loop ticks at least every second or so; this long without a tick is a stuck loop.
LOOP_STALE_S = 15.0
MEDIA_TYPES = {".mp4": "video/mp4", ".webp": "image/webp", ".gif": "image/gif", ".mov": "video/quicktime", ".png": "image/png"}


def create_app(supervisor: Supervisor, address: WebAddress) -> FastAPI:
    layout: Layout = supervisor.layout
    settings = supervisor.settings
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app = FastAPI(
        title="fploopd", version=__version__, docs_url=None, redoc_url=None,  # the docs pages load scripts from a CDN
        description="FramePack loop daemon: its jobs, drops waiting in the inbox, health and metrics.",
    )
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def check_access(request: Request, call_next: Any) -> Response:
        refused = guard.refuse(request, address)
        if refused is not None:
            return refused
        response = await call_next(request)
        guard.remember(request, response, address)
        return response

    @contextmanager
    def reading() -> Iterator[Journal | None]:
        journal = control.open_journal(layout, "web", readonly=True, url=settings.journal)
        try:
            yield journal
        finally:
            if journal is not None:
                journal.close()

    @contextmanager
    def writing() -> Iterator[Journal]:
        journal = control.open_journal(layout, "web", url=settings.journal)
        if journal is None:
            raise HTTPException(404, "no jobs yet")
        try:
            yield journal
        except control.JobError as exc:
            raise HTTPException(409, exc.message) from None
        finally:
            journal.close()

    def job_of(journal: Journal | None, key: str) -> Job:
        try:
            return control.find(journal, key)
        except control.JobError as exc:
            raise HTTPException(404, exc.message) from None

    def folder_of(job: Job) -> Path | None:
        """Where the job's preview and manifest are: its outbox folder, else its failed one."""
        places = control.where(job, layout)
        if job.state is JobState.DONE and places["outputs"]:
            return Path(places["outputs"])
        if job.state in (JobState.FAILED, JobState.CANCELLED) and job.delivered_at is not None and places["inputs"]:
            return Path(places["inputs"])
        return None

    # --- the page -------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request) -> Response:
        with reading() as journal:
            jobs = control.status_views(journal, layout)
        # The guard let this request in, so it holds the token (if one is set): the page's script
        # sends it back in the header every POST needs. Other origins cannot read the page.
        context = {
            "jobs_json": json.dumps(jobs).replace("<", "\\u003c"),  # no "</script>" from a job's name
            "token": address.token or "local",
            "version": __version__,
            "profiles": sorted(p.stem for p in layout.profiles.glob("*.json")),
        }
        return templates.TemplateResponse(request, "index.html", context)

    # --- the JSON API ---------------------------------------------------------------------------

    @app.get("/api/jobs", summary="Every job and waiting drop: the objects of `fploopd status --json`")
    def list_jobs() -> list[dict[str, Any]]:
        with reading() as journal:
            return control.status_views(journal, layout)

    @app.get("/api/jobs/{key}", summary="One job (by id or name), as `fploopd status --json JOB`")
    def get_job(key: str) -> dict[str, Any]:
        with reading() as journal:
            return control.job_status(journal, job_of(journal, key), layout)

    @app.get("/api/daemon", summary="The daemon: pid, paused, each worker's state")
    def daemon() -> dict[str, Any]:
        with reading() as journal:
            return {"daemon": control.daemon_view(journal)}

    @app.get("/api/jobs/{key}/progress", summary="A running job's progress file (progress/<name>.json)")
    def job_progress(key: str) -> Response:
        with reading() as journal:
            job = job_of(journal, key)
        path = layout.progress_json(job.name)
        if job.state is not JobState.RUNNING or not path.is_file():
            raise HTTPException(404, f"job {job.name} has no live progress")
        return Response(path.read_bytes(), media_type="application/json")

    @app.get("/api/jobs/{key}/preview", summary="The latent preview: live while running, then the job's preview.webp")
    def job_preview(key: str) -> Response:
        with reading() as journal:
            job = job_of(journal, key)
        candidates = [layout.progress_webp(job.name)] if job.state is JobState.RUNNING else []
        if (folder := folder_of(job)) is not None:
            candidates += [folder / PREVIEW_FILE, folder / PREVIEW_FALLBACK] if job.state is not JobState.DONE else [folder / PREVIEW_FILE]
        for path in candidates:
            if path.is_file():
                return FileResponse(path, media_type="image/webp", headers={"Cache-Control": "no-store"})
        raise HTTPException(404, f"job {job.name} has no preview yet")

    @app.get("/api/jobs/{key}/outputs/{index}", summary="A done job's output file, by its place in `outputs`")
    def job_output(key: str, index: int) -> Response:
        with reading() as journal:
            view = control.job_status(journal, job_of(journal, key), layout)
        if not 0 <= index < len(view["outputs"]):
            raise HTTPException(404, f"job {view['name']} has no output {index}")
        path = Path(view["outputs"][index]["path"])
        if not path.is_file():
            raise HTTPException(404, f"{path.name} is no longer in the outbox")
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    @app.get("/api/jobs/{key}/manifest", summary="A done job's manifest.json")
    def job_manifest(key: str) -> Response:
        with reading() as journal:
            job = job_of(journal, key)
        folder = folder_of(job) if job.state is JobState.DONE else None
        if folder is None or not (folder / "manifest.json").is_file():
            raise HTTPException(404, f"job {job.name} has no manifest")
        return FileResponse(folder / "manifest.json", media_type="application/json")

    @app.post("/api/jobs", status_code=201, summary="Submit a job: multipart media + the sidecar's fields, as `fploopd submit`")
    async def post_job(request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return JSONResponse({"error": "the upload needs a Content-Length"}, status_code=411)
        if int(length) > max_body(settings.limits):
            return JSONResponse({"error": f"the upload is larger than the media limits allow ({max_body(settings.limits)} bytes)"}, status_code=413)
        try:
            form = await request.form(max_files=2, max_fields=64)
        except Exception as exc:  # noqa: BLE001 - a malformed body is the sender's mistake
            return JSONResponse({"error": f"cannot read the form: {exc}"}, status_code=400)
        try:
            done = await run_in_threadpool(submit_upload, layout, form, settings.limits)
        except InputError as exc:
            return JSONResponse({"error": exc.record().to_json()}, status_code=422)
        finally:
            await form.close()
        body = {"sidecar": layout.rel(done.sidecar), "name": done.sidecar.stem, "fields": done.content}
        if done.error is not None:
            # Written all the same: intake fails it like any bad drop, files and all, into failed/.
            body |= {"error": done.error.record().to_json(), "failed": f"failed/{done.sidecar.stem}/"}
            return JSONResponse(body, status_code=422)
        return JSONResponse(body, status_code=201)

    @app.post("/api/jobs/{key}/cancel", summary="Cancel a queued job now, a running one at its next step")
    def cancel_job(key: str) -> dict[str, Any]:
        with writing() as journal:
            return control.job_status(journal, control.cancel(journal, layout, key), layout)

    @app.post("/api/jobs/{key}/retry", summary="Queue a failed or cancelled job again")
    def retry_job(key: str) -> dict[str, Any]:
        with writing() as journal:
            return control.job_status(journal, control.retry(journal, layout, key), layout)

    @app.post("/api/jobs/{key}/priority", summary="Set a queued job's priority (higher runs first)")
    def prioritise_job(key: str, priority: int) -> dict[str, Any]:
        with writing() as journal:
            return control.job_status(journal, control.set_priority(journal, key, priority), layout)

    # --- health and metrics ---------------------------------------------------------------------

    @app.get("/healthz", summary="ok (200) when the supervisor's loop and at least one worker are alive, else 503")
    def healthz() -> JSONResponse:
        ticked, workers = supervisor.health
        loop_s = time.monotonic() - ticked
        ok = loop_s < LOOP_STALE_S and bool(workers)
        body = {"ok": ok, "loop_s": round(loop_s, 1), "workers": list(workers)}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(supervisor.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(FploopdError)
    async def fploopd_error(request: Request, exc: FploopdError) -> JSONResponse:
        return JSONResponse({"error": exc.record().to_json()}, status_code=400)

    return app
