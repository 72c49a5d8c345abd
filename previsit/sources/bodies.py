"""Reading an HTTP answer without letting it decide how much previsit reads.

A server (or anything pretending to be one) can send a 1 GiB body, a gzip bomb that
expands to gigabytes, or a body that never ends. `capped_send` streams the answer, undoes
gzip/deflate itself a piece at a time, and stops at a byte cap counted after decoding;
every FHIR request previsit makes goes through it.
"""

from __future__ import annotations

import zlib
from typing import Any

import httpx
from httpx._client import UseClientDefault  # the type of httpx.USE_CLIENT_DEFAULT

from previsit.errors import RequestFailed

# What previsit accepts: encodings it can undo a piece at a time under its cap.
ACCEPT_ENCODING = "gzip, deflate"


async def capped_send(client: httpx.AsyncClient, request: httpx.Request, cap: int,
                      target: str, *,
                      auth: httpx.Auth | UseClientDefault | None =
                      httpx.USE_CLIENT_DEFAULT) -> httpx.Response:
    """Send `request` and read its body, at most `max_response_bytes` of it once
    decoded; the response returned holds the decoded body (and no Content-Encoding)."""
    response = await client.send(request, stream=True, auth=auth)
    try:
        too_large = f"{request.method} {target}: the answer is larger than " \
            f"source.max_response_bytes ({cap:,} bytes); not read"
        inflate = Inflater(response.headers.get("content-encoding", ""),
                            f"{request.method} {target}")
        declared = response.headers.get("content-length", "")
        if inflate.identity and declared.isdigit() and int(declared) > cap:
            raise RequestFailed(too_large)
        parts: list[bytes] = []
        size = 0
        if response.is_stream_consumed:
            # A response built in memory (a mock transport) arrives read and decoded.
            parts.append(response.content)
            size = len(response.content)
        else:
            async for chunk in response.aiter_raw():
                data = inflate.feed(chunk, cap - size + 1)
                size += len(data)
                if size > cap:
                    break
                parts.append(data)
            else:
                data = inflate.finish(cap - size + 1)
                size += len(data)
                parts.append(data)
        if size > cap:
            raise RequestFailed(too_large)
    finally:
        await response.aclose()
    # As bytes: a header value that is not ASCII (a server's UTF-8) must not fail the read.
    kept = [(k, v) for k, v in response.headers.raw
            if k.lower() not in (b"content-encoding", b"content-length", b"transfer-encoding")]
    return httpx.Response(response.status_code, headers=kept, content=b"".join(parts),
                          request=response.request, extensions=response.extensions)


class Inflater:
    """Undoes a response's Content-Encoding (gzip or deflate) a piece at a time, never
    producing more than asked: a 2 GB gzip bomb yields only the bytes under the cap."""

    def __init__(self, header: str, what: str) -> None:
        codings = [c.strip().lower() for c in header.split(",")
                   if c.strip() and c.strip().lower() != "identity"]
        self.identity = not codings
        self._what = what
        self._inflater: Any = None
        if codings in (["gzip"], ["x-gzip"]):
            self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        elif codings == ["deflate"]:
            self._inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS)
        elif codings:
            raise RequestFailed(f"{what}: the answer is encoded as {header!r}; previsit asks "
                                f"for {ACCEPT_ENCODING} only")

    def feed(self, chunk: bytes, limit: int) -> bytes:
        """The decoded bytes of `chunk`, at most `limit` of them."""
        if self._inflater is None:
            return chunk
        try:
            return bytes(self._inflater.decompress(chunk, limit))
        except zlib.error:
            raise RequestFailed(f"{self._what}: the answer is not valid compressed data") \
                from None

    def finish(self, limit: int) -> bytes:
        """What is left once the body has ended (at most `limit` bytes); a stream that
        ends early is an error, as httpx would make it."""
        if self._inflater is None:
            return b""
        if not self._inflater.eof:
            raise RequestFailed(f"{self._what}: the compressed answer ended early")
        return bytes(self._inflater.decompress(self._inflater.unconsumed_tail, limit))
