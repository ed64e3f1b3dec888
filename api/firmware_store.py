"""Objects in S3: firmware images (streamed multipart upload, size and sha256 computed on
the way) and presigned URLs (a device's log upload, its download by an admin).

Each part (``part_bytes``, ≥ 5 MiB, S3's minimum) is spooled to an anonymous temporary
file, then sent from there: memory stays around one network chunk plus botocore's read
blocks (measured: see tests/integration/api/test_firmware.py), and disk holds one part.
boto3 is synchronous, so each call runs in a worker thread. botocore errors become
:class:`api.errors.StorageError` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from api.errors import InvalidInput, PayloadTooLarge, StorageError
from outpost import s3 as outpost_s3
from outpost.settings import S3Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True, slots=True)
class Stored:
    key: str
    size: int
    sha256: str


def s3_client(settings: S3Settings) -> S3Client:
    """Long read timeout: multipart parts of several MiB."""
    return outpost_s3.client(settings, connect_timeout=3, read_timeout=30)


class FirmwareStore:
    def __init__(self, client: S3Client, bucket: str, *, part_bytes: int, max_bytes: int) -> None:
        self._s3 = client
        self._bucket = bucket
        self._part_bytes = part_bytes
        self._max_bytes = max_bytes

    async def _call(self, name: str, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(getattr(self._s3, name), Bucket=self._bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"S3 {name} failed: {exc}") from None

    async def ping(self) -> bool:
        try:
            await self._call("head_bucket")
        except StorageError:
            return False
        return True

    async def upload(self, key: str, chunks: AsyncIterator[bytes]) -> Stored:
        """Stream ``chunks`` to ``key``; abort the upload on any error."""
        started = await self._call(
            "create_multipart_upload", Key=key, ContentType="application/octet-stream"
        )
        upload_id = started["UploadId"]
        try:
            return await self._parts(key, upload_id, chunks)
        except BaseException:
            await asyncio.shield(self._abort(key, upload_id))
            raise

    async def _abort(self, key: str, upload_id: str) -> None:
        # if this fails too, the bucket's lifecycle rule removes stale uploads
        with contextlib.suppress(StorageError):
            await self._call("abort_multipart_upload", Key=key, UploadId=upload_id)

    async def _parts(self, key: str, upload_id: str, chunks: AsyncIterator[bytes]) -> Stored:
        digest, size = hashlib.sha256(), 0
        parts: list[dict[str, Any]] = []
        spool = _Spool()
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > self._max_bytes:
                    raise PayloadTooLarge(f"image larger than {self._max_bytes} bytes")
                digest.update(chunk)
                await spool.write(chunk)
                if spool.size >= self._part_bytes:
                    parts.append(await self._part(key, upload_id, len(parts) + 1, spool))
                    spool.close()
                    spool = _Spool()
            if size == 0:  # the upload is aborted: nothing is stored
                raise InvalidInput("the image is empty", loc=("body",))
            if spool.size:
                parts.append(await self._part(key, upload_id, len(parts) + 1, spool))
        finally:
            spool.close()
        await self._call(
            "complete_multipart_upload",
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
        return Stored(key, size, digest.hexdigest())

    async def _part(self, key: str, upload_id: str, number: int, spool: _Spool) -> dict[str, Any]:
        spool.file.seek(0)
        result = await self._call(
            "upload_part",
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=spool.file,
            ContentLength=spool.size,
        )
        return {"PartNumber": number, "ETag": result["ETag"]}

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Key=key)

    def presigned(self, method: str, key: str, seconds: int) -> str:
        """A presigned ``get_object`` or ``put_object`` URL for ``key`` (local signing, no
        request to S3), valid for ``seconds``."""
        try:
            url: str = self._s3.generate_presigned_url(
                method, Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=max(1, seconds)
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"S3 presign failed: {exc}") from None
        return url

    async def head(self, key: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("head_object", Key=key)
        return result


class _Spool:
    """One part on its way to S3, in an anonymous temporary file: memory stays at one
    network chunk, whatever the part size (botocore reads the file in small blocks)."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        await asyncio.to_thread(self.file.write, chunk)
        self.size += len(chunk)

    def close(self) -> None:
        self.file.close()
