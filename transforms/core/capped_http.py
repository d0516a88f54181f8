"""An aiohttp response that cannot fill a worker's memory: gcsfs reads every body it keeps
through ``read()``, and this ``read()`` stops once the body passes what its request's ``Range``
can hold (a fast endless body grew a process by 1.6 GB in 150 s). Given to gcsfs's session by
``remote_io.remote_options``; aiohttp is imported only where ``gs://`` is read."""

from __future__ import annotations

import re

import aiohttp

from transforms.core.errors import ResponseTooLarge, redact, shorten

RANGE_SLACK_BYTES = 64 << 10
"""What a range response may carry beyond the bytes asked for (none, from a correct server)."""
MAX_UNRANGED_BYTES = 256 << 20
"""The cap on a response to a request that names no range: object metadata, a listing page, a
small file read whole. Files larger than this are read by range (every slide, model and result
file is)."""


def response_cap(range_header: str | None) -> int:
    """The most bytes a response to a request with this ``Range`` header can hold."""
    found = re.fullmatch(r"bytes=(\d*)-(\d*)", (range_header or "").strip())
    if not found or not found.group(2):
        return MAX_UNRANGED_BYTES
    start, end = found.group(1), int(found.group(2))
    asked = end if not start else end - int(start) + 1  # "bytes=-N" is the last N bytes
    return max(asked, 0) + RANGE_SLACK_BYTES


class CappedResponse(aiohttp.ClientResponse):
    async def read(self) -> bytes:
        if self._body is None:  # aiohttp keeps a read body there, and its read() returns it
            cap = response_cap(self.request_info.headers.get("Range"))
            parts: list[bytes] = []
            size = 0
            while chunk := await self.content.readany():
                size += len(chunk)
                if size > cap:
                    self.close()
                    raise ResponseTooLarge(redact(shorten(str(self.url), 500)), cap)
                parts.append(chunk)
            self._body = b"".join(parts)
        return await super().read()
