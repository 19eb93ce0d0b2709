"""The HTTP API and the page of `metalab serve` (FastAPI), over a `ServedModel`.

Requests carry images either as JSON (base64 strings, data URLs accepted) or as multipart uploads
(a support set's file fields are named by their class). Bodies are read with a size cap before
parsing; decoding and the model run in the thread pool, so the event loop stays free. Every error is
`{"detail": "<one message>"}` with its status: 404 unknown episode, 409 a support set the learner
cannot take, 413 over a limit, 415 neither JSON nor multipart, 422 a bad request or image.
"""

from __future__ import annotations

import base64
import binascii
import json
from importlib import resources
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from .model import ApiError, Limits, ServedModel, Upload

__all__ = ["create_app"]

STATIC = Path(str(resources.files("metalab.serve") / "static"))


class SupportClass(BaseModel):
    name: str = Field(description="the class name (classes are labelled in sorted name order)")
    images: list[str] = Field(description="encoded images (PNG, JPEG, ...) as base64 or data URLs")


class EpisodeRequest(BaseModel):
    classes: list[SupportClass] = Field(description="the support set: each class with its examples")


class PredictRequest(BaseModel):
    images: list[str] = Field(description="query images as base64 or data URLs, answered in this order")
    names: list[str] | None = Field(
        None, description="names for the queries in the answer (default 0, 1, ...)"
    )
    steps: int | None = Field(
        None, description="inner steps (gradient-based learners; default the checkpoint's)"
    )


def _body_doc(model: type[BaseModel], multipart: str) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": model.model_json_schema()},
                "multipart/form-data": {"schema": {"type": "object", "description": multipart}},
            },
        }
    }


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {int(declared):,} bytes, over the limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_base64(text: str, name: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"image {name} is not valid base64") from None


async def _parse(request: Request, model: type[BaseModel], limit: int):
    """(JSON model, None) or (None, [(field name, file name, bytes), ...] plus form fields)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_body(request, limit)
    if kind == "application/json":
        try:
            return model.model_validate(json.loads(body)), None
        except json.JSONDecodeError as e:
            raise ApiError(422, f"the body is not valid JSON ({e})") from None
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"])) or "body"
            raise ApiError(422, f"bad request: {where}: {first['msg']}") from None
    if kind == "multipart/form-data":

        async def stream():
            yield body

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=10_000).parse()
        except MultiPartException as e:
            raise ApiError(422, f"bad multipart body: {e.message}") from None
        parts = []
        for field, value in form.multi_items():
            if isinstance(value, UploadFile):
                parts.append((field, value.filename or field, await value.read()))
            else:
                parts.append((field, None, value))
        return None, parts
    raise ApiError(415, f"send application/json or multipart/form-data, not {kind or 'no content type'}")


def create_app(
    checkpoint: str | Path,
    limits: Limits | None = None,
    *,
    invert: bool | None = None,
    warn: Callable[[str], None] | None = None,
) -> FastAPI:
    """The FastAPI application serving one checkpoint (loaded here, once); `invert` overrides the
    checkpoint's image inversion (see `metalab.predict.image_invert`)."""
    served = ServedModel(checkpoint, limits, invert=invert, warn=warn)
    lim = served.limits
    app = FastAPI(
        title="metalab serve",
        summary=f"few-shot learning with {served.config.algorithm} ({Path(str(checkpoint)).name})",
        description="Make an episode from a few labelled examples per class, then label query images.",
    )
    app.state.served = served

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse({"detail": e.message}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        return JSONResponse(
            {"detail": f"bad request: {'.'.join(map(str, first['loc']))}: {first['msg']}"}, 422
        )

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(e.detail)}, status_code=e.status_code)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/model", summary="the checkpoint: algorithm, backbone, image preparation, constraints, limits")
    def model() -> dict:
        return served.describe()

    @app.post(
        "/episodes",
        status_code=201,
        summary="make an episode from a support set; returns its id",
        openapi_extra=_body_doc(EpisodeRequest, "one file field per image, named by its class"),
    )
    async def create_episode(request: Request) -> dict:
        parsed, parts = await _parse(request, EpisodeRequest, lim.max_request_bytes)
        if parsed is not None:
            classes = [
                (
                    c.name,
                    [(f"{c.name}[{i}]", _decode_base64(s, f"{c.name}[{i}]")) for i, s in enumerate(c.images)],
                )
                for c in parsed.classes
            ]
        else:
            grouped: dict[str, list[Upload]] = {}
            for field, filename, data in parts:
                if filename is None:
                    raise ApiError(
                        422, f"form field {field!r} is not a file; name each image file by its class"
                    )
                grouped.setdefault(field, []).append((filename, data))
            classes = list(grouped.items())
        episode = await run_in_threadpool(served.create_episode, classes)
        return episode.summary(lim.episode_ttl)

    @app.get("/episodes/{episode_id}", summary="an episode's classes and their numbers of examples")
    def get_episode(episode_id: str) -> dict:
        return served.episodes.get(episode_id).summary(lim.episode_ttl)

    @app.delete("/episodes/{episode_id}", status_code=204, summary="forget an episode")
    def delete_episode(episode_id: str) -> Response:
        served.episodes.delete(episode_id)
        return Response(status_code=204)

    @app.post(
        "/episodes/{episode_id}/predict",
        summary="adapt to the episode's support set and label query images",
        openapi_extra=_body_doc(PredictRequest, "query image files (any field name); optional field steps"),
    )
    async def predict(episode_id: str, request: Request) -> dict:
        parsed, parts = await _parse(request, PredictRequest, lim.max_request_bytes)
        if parsed is not None:
            names = parsed.names or [str(i) for i in range(len(parsed.images))]
            if len(names) != len(parsed.images):
                raise ApiError(422, f"{len(names)} names for {len(parsed.images)} images")
            queries = [(n, _decode_base64(s, n)) for n, s in zip(names, parsed.images)]
            steps = parsed.steps
        else:
            queries = [(filename, data) for _, filename, data in parts if filename is not None]
            fields = {field: value for field, filename, value in parts if filename is None}
            unknown = set(fields) - {"steps"}
            if unknown:
                raise ApiError(422, f"unknown form fields: {', '.join(sorted(unknown))} (only steps)")
            try:
                steps = int(fields["steps"]) if "steps" in fields else None
            except ValueError:
                raise ApiError(422, f"steps must be an integer, got {fields['steps']!r}") from None
        return await run_in_threadpool(served.predict, episode_id, queries, steps)

    return app
