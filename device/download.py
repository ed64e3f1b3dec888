"""Streaming firmware download over HTTP(S) with resume, for the reference agent.

The image goes to disk chunk by chunk while :class:`~device.behaviour.ImageCheck` hashes
it; nothing holds the whole image in memory. A partial file left by a reboot is hashed
again and the rest requested with ``Range`` (presigned S3 URLs sign only the host, so a
Range header keeps the signature valid); a server that ignores Range gets a fresh start.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from device.behaviour import ImageCheck
from device.errors import DownloadError

__all__ = ["CHUNK", "download", "resume_partial"]

CHUNK = 64 * 1024


def _rehash(path: Path, check: ImageCheck) -> None:
    with path.open("rb") as partial:
        while chunk := partial.read(CHUNK):
            check.update(chunk)


def _open(url: str, offset: int, timeout: float) -> tuple[BinaryIO, bool]:
    """The response body and whether it continues at ``offset`` (206) or restarts (200)."""
    request = urllib.request.Request(url)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot reach download URL: {exc}") from None
    return response, response.status == 206


def resume_partial(dest: Path, check: ImageCheck) -> int:
    """Hash what an earlier attempt left in ``dest``; the offset to continue from."""
    if dest.exists() and 0 < dest.stat().st_size < check.expected_size:
        _rehash(dest, check)
        return check.received
    dest.unlink(missing_ok=True)
    return 0


def download(
    url: str,
    dest: Path,
    check: ImageCheck,
    *,
    on_chunk: Callable[[ImageCheck], None] = lambda _check: None,
    max_rate: float | None = None,
    timeout: float = 30.0,
) -> None:
    """Fetch ``url`` into ``dest``, feeding ``check``.

    Call :func:`resume_partial` first: the download continues at ``check.received``.

    ``on_chunk`` runs after every chunk (the agent services MQTT and reports progress
    there). ``max_rate`` (bytes/s) throttles, to simulate slow links. Raises
    :class:`DownloadError` on HTTP or network errors and ``ValueError`` when the server
    sends more than the announced size. The caller checks ``check.failure()`` at the end.
    """
    offset = check.received
    body, resumed = _open(url, offset, timeout)
    if offset and not resumed:
        check.reset()
    started, base = time.monotonic(), check.received
    with body, dest.open("ab" if resumed else "wb") as out:
        while True:
            try:
                chunk = body.read(CHUNK)
            except OSError as exc:
                raise DownloadError(f"download interrupted: {exc}") from None
            if not chunk:
                return
            check.update(chunk)
            out.write(chunk)
            out.flush()
            on_chunk(check)
            if max_rate:
                ahead = (check.received - base) / max_rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
