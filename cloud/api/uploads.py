"""`POST /lines/{site}/{line}/samples`: frames and labels from the lines (the sample
inbox, cloud/datasets/inbox.py). The client contract is docs/datasets.md.

Authenticated per line: `Authorization: Bearer <line token>` (made by `lineguard cloud
line token SITE/LINE`), not the fleet API's token. Checked before the body is read:
401 for a missing or wrong token, 403 for another line's token, 411 without a
Content-Length, 413 over `datasets.upload_max_bytes`. Then: 415 for a body that is not
multipart/form-data, 422 for a missing or malformed `meta` or `image` part, a bad image
or a box outside it (the error says which part and why, never echoing the input), 409
for a sample id used before with another image. 201 `stored` for a new sample, 200
`duplicate` for a repeat. 503 when the database cannot be written. Nothing is stored
unless the answer is 201.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Final

from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from cloud.datasets.errors import DatasetError, SampleError, TokenError
from cloud.datasets.inbox import SampleConflict, SampleInbox, WrongLineToken
from protocol.samples import IMAGE_PART, IMAGE_TYPES, META_PART, SampleMeta, SampleReceipt

logger = logging.getLogger(__name__)

ID_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_META_MAX_BYTES: Final = 1024 * 1024


def _fail(code: int, detail: str, **headers: str) -> HTTPException:
    return HTTPException(code, detail, headers=headers or None)


def _invalid(part: str, msg: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         [{"loc": ["body", part], "msg": msg[:500], "type": "value_error"}])


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def samples_router(inbox: SampleInbox, *, max_body_bytes: int) -> APIRouter:
    """The upload endpoint over `inbox`; bodies up to `max_body_bytes`."""
    router = APIRouter(tags=["samples"])
    responses: dict[int | str, dict[str, Any]] = {
        200: {"model": SampleReceipt, "description": "a repeat of an uploaded sample"},
        401: {"description": "missing or wrong line token"},
        403: {"description": "the token of another line"},
        409: {"description": "the sample id was used with another image"},
        411: {"description": "no Content-Length"},
        413: {"description": "body larger than datasets.upload_max_bytes"},
        415: {"description": "not multipart/form-data"},
        503: {"description": "the database cannot be written"},
    }

    # The body is read by hand (auth and size first), so describe it for the spec here.
    body_spec = {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": [META_PART, IMAGE_PART], "properties": {
            META_PART: {"type": "string", "contentMediaType": "application/json",
                        "contentSchema": SampleMeta.model_json_schema(by_alias=True),
                        "description": "the sample's meta data as JSON"},
            IMAGE_PART: {"type": "string", "format": "binary",
                         "description": "the frame, JPEG or PNG"}}},
        "encoding": {IMAGE_PART: {"contentType": ", ".join(IMAGE_TYPES)}}}}}}

    @router.post("/lines/{site}/{line}/samples", status_code=201, responses=responses,
                 openapi_extra=body_spec)
    async def upload_sample(
        request: Request, response: Response,
        site: Annotated[str, Path(pattern=ID_PATTERN)],
        line: Annotated[str, Path(pattern=ID_PATTERN)],
    ) -> SampleReceipt:
        """Upload one sampled frame (multipart: `meta` JSON per protocol/samples.py's
        SampleMeta, `image` JPEG or PNG). Idempotent by `sample_id`."""
        try:
            await run_in_threadpool(inbox.authenticate, site, line, _bearer(request))
        except WrongLineToken as e:
            raise _fail(status.HTTP_403_FORBIDDEN, str(e)) from e
        except TokenError as e:
            raise _fail(status.HTTP_401_UNAUTHORIZED, str(e),
                        **{"WWW-Authenticate": "Bearer"}) from e
        except DatasetError as e:
            logger.error("sample upload %s/%s: %s", site, line, e)
            raise _fail(status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable") from e
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise _fail(status.HTTP_411_LENGTH_REQUIRED, "a Content-Length is required")
        if int(length) > max_body_bytes:
            raise _fail(status.HTTP_413_CONTENT_TOO_LARGE,
                        f"body of {int(length)} bytes is over the limit of {max_body_bytes}")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise _fail(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                        "expected multipart/form-data with parts meta and image")
        try:
            form = await request.form(max_files=1, max_fields=1,
                                      max_part_size=_META_MAX_BYTES)
        except MultiPartException as e:
            raise _invalid("form", f"malformed multipart body: {e.message}") from e
        try:
            meta_text = form.get(META_PART)
            image = form.get(IMAGE_PART)
            if not isinstance(meta_text, str):
                raise _invalid(META_PART, "missing (a form field holding the JSON meta)")
            if not isinstance(image, UploadFile):
                raise _invalid(IMAGE_PART, "missing (a file part holding the JPEG or PNG)")
            if image.content_type not in IMAGE_TYPES:
                raise _invalid(IMAGE_PART, f"content type must be one of {', '.join(IMAGE_TYPES)}")
            try:
                meta = SampleMeta.model_validate_json(meta_text)
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(p) for p in first.get("loc", ()))
                more = e.error_count() - 1
                raise _invalid(META_PART, f"{where}: {first.get('msg', '')}"
                               + (f" (and {more} more)" if more else "")) from None
            data = await image.read()
        finally:
            await form.close()
        try:
            receipt = await run_in_threadpool(inbox.add, site, line, meta, data)
        except SampleConflict as e:
            raise _fail(status.HTTP_409_CONFLICT, str(e)) from e
        except SampleError as e:
            raise _invalid("sample", str(e)) from e
        except DatasetError as e:
            logger.error("sample upload %s/%s %s: %s", site, line, meta.sample_id, e)
            raise _fail(status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable") from e
        if receipt.status == "duplicate":
            response.status_code = status.HTTP_200_OK
        return receipt

    return router
