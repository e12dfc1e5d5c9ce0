"""OpenAI's Files and Batches routes: /v1/files and /v1/batches. Thin: avito_ai/batches
(service.py) answers; these parse the request. Dialect-neutral: imports no other
dialect package."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from avito_ai.api.batches.protocol import (
    Batch,
    BatchCreateRequest,
    BatchList,
    FileDeleted,
    FileList,
    FileObject,
)
from avito_ai.api.deps import ClientDep
from avito_ai.api.openapi import errors
from avito_ai.batches.service import BatchService, store_errors
from avito_ai.errors import BatchStoreUnavailable

router = APIRouter(prefix="/v1", tags=["OpenAI Batch API"])
Limit = Annotated[int, Query(ge=1, le=10000)]


def service(request: Request) -> BatchService:
    found: BatchService | None = getattr(request.app.state, "batches", None)
    if found is None:
        raise BatchStoreUnavailable("The Batch API is off in this process (BATCH_ENABLED=false)")
    return found


@router.post(
    "/files",
    summary="Upload a JSONL file of requests (purpose=batch)",
    response_model=FileObject,
    responses=errors(400, 413, 503),
)
async def create_file(
    request: Request,
    client: ClientDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form(min_length=1)],
) -> dict[str, Any]:
    return await service(request).upload(client, file.file, file.filename or "", purpose)


@router.get(
    "/files", summary="List your files", response_model=FileList, responses=errors(400, 503)
)
async def list_files(
    request: Request,
    client: ClientDep,
    purpose: str | None = None,
    limit: Limit = 10000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> dict[str, Any]:
    return await service(request).list_files(
        client, purpose=purpose, limit=limit, after=after, order=order
    )


@router.get(
    "/files/{file_id}", summary="A file", response_model=FileObject, responses=errors(404, 503)
)
async def get_file(request: Request, client: ClientDep, file_id: str) -> dict[str, Any]:
    return await service(request).get_file(client, file_id)


@router.delete(
    "/files/{file_id}",
    summary="Delete a file",
    response_model=FileDeleted,
    responses=errors(404, 503),
)
async def delete_file(request: Request, client: ClientDep, file_id: str) -> dict[str, Any]:
    return await service(request).delete_file(client, file_id)


@router.get(
    "/files/{file_id}/content",
    summary="A file's contents (JSONL)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/jsonl": {}}}, **errors(404, 503)},
)
async def file_content(request: Request, client: ClientDep, file_id: str) -> StreamingResponse:
    row, body = await service(request).content(client, file_id)

    async def guarded() -> Any:
        with store_errors():
            async for part in body:
                yield part

    return StreamingResponse(
        guarded(),
        media_type="application/jsonl",
        headers={"Content-Disposition": f'attachment; filename="{row["filename"]}"'},
    )


@router.post(
    "/batches", summary="Create a batch", response_model=Batch, responses=errors(400, 404, 503)
)
async def create_batch(
    request: Request, client: ClientDep, body: BatchCreateRequest
) -> dict[str, Any]:
    return await service(request).create(
        client,
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
    )


@router.get(
    "/batches", summary="List your batches", response_model=BatchList, responses=errors(400, 503)
)
async def list_batches(
    request: Request, client: ClientDep, limit: Limit = 20, after: str | None = None
) -> dict[str, Any]:
    return await service(request).list(client, limit=limit, after=after)


@router.get(
    "/batches/{batch_id}", summary="A batch", response_model=Batch, responses=errors(404, 503)
)
async def get_batch(request: Request, client: ClientDep, batch_id: str) -> dict[str, Any]:
    return await service(request).get(client, batch_id)


@router.post(
    "/batches/{batch_id}/cancel",
    summary="Cancel a batch (lines not yet run end in the error file)",
    response_model=Batch,
    responses=errors(404, 409, 503),
)
async def cancel_batch(request: Request, client: ClientDep, batch_id: str) -> dict[str, Any]:
    return await service(request).cancel(client, batch_id)


# A path with two methods is two routes; a 405 names both in Allow (Starlette's would name
# the first route's only), so other methods meet this route, undocumented.
OTHER_METHODS = ("DELETE", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
ALLOWED = {"/files": "GET, POST", "/files/{file_id}": "DELETE, GET", "/batches": "GET, POST"}


def _refuse(allow: str) -> Any:
    async def refuse() -> None:
        raise HTTPException(405, headers={"Allow": allow})

    return refuse


for _path, _allow in ALLOWED.items():
    router.add_api_route(
        _path,
        _refuse(_allow),
        methods=[m for m in OTHER_METHODS if m not in _allow],
        include_in_schema=False,
    )
