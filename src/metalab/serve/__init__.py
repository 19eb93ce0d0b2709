"""`metalab serve`: few-shot learning over HTTP and in the browser, from one checkpoint.

`create_app(checkpoint)` is the FastAPI application (JSON API, OpenAPI page at /docs, the drawing page
at /); `serve(checkpoint, host, port)` runs it with uvicorn. Both need the optional extra
`pip install 'metalab[serve]'`. What the server does per request, without the framework, is in
`model.py`; docs/serve.md describes the API and its limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .app import create_app
from .model import ApiError, EpisodeStore, Limits, ServedModel

__all__ = ["ApiError", "EpisodeStore", "Limits", "ServedModel", "create_app", "serve"]


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    *,
    invert: bool | None = None,
    warn: Callable[[str], None] | None = None,
) -> None:
    """Load the checkpoint once and serve it until interrupted (`invert`: see `create_app`)."""
    import uvicorn

    app = create_app(checkpoint, limits, invert=invert, warn=warn)
    served = app.state.served
    print(
        f"metalab serve: {served.config.algorithm} from {checkpoint} on http://{host}:{port}/ "
        f"(API documentation: http://{host}:{port}/docs)",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
