"""Reading an answer's body with bounds on its time and its size, on both HTTP paths.

Each read of a body is bounded by the timeout, but without these bounds the whole was not:
a server (or a proxy) that drips a byte every few seconds held a request for ever, and one
that never ends its body was buffered until the machine ran out of memory (5 GB after 20 s,
round 13 of #19). So:

* the body gets :data:`ANSWER_PHASE` times the timeout in all, then ``httpx.ReadTimeout``
  (a timeout like any other: retried, then one clear line);
* the body may be at most :data:`MAX_ANSWER_BYTES` on the wire and once decoded (a small gzip
  body can inflate a thousandfold), else :class:`AnswerTooLarge` (not retried: the same
  request would get the same answer). Courier's largest answers are pages of 100 users of at
  most 100 kB each (``max_user_bytes``): about 10 MB.

httpx and aiohttp have no such limits to set (httpx has no total timeout and no size cap;
aiohttp's ``ClientTimeout.total`` would also cover the request phase, which has its own
bound), hence this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx

__all__ = [
    "ANSWER_PHASE",
    "MAX_ANSWER_BYTES",
    "AnswerTooLarge",
    "answer_deadline_error",
    "check_declared",
    "decoded_response",
    "read_capped",
    "read_streamed",
    "size_text",
]

ANSWER_PHASE = 3
"""An answer's body: at most this many timeouts in all, however it trickles in."""

MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""The most bytes an answer's body may have, on the wire and once decoded."""


class AnswerTooLarge(Exception):
    """An answer's body is over :data:`MAX_ANSWER_BYTES`; its text says which limit."""


def size_text(size: int) -> str:
    """``64 MiB`` for a whole number of MiB, else bytes."""
    mib = 1024 * 1024
    return f"{size // mib} MiB" if size % mib == 0 else f"{size:,} bytes"


def too_large(decoded: bool = False) -> AnswerTooLarge:
    """The error for a body over the cap, on the wire or (``decoded``) once decoded."""
    after = " once decoded" if decoded else ""
    return AnswerTooLarge(f"the answer's body is over {size_text(MAX_ANSWER_BYTES)}{after}")


def answer_deadline_error(seconds: float) -> httpx.ReadTimeout:
    """The timeout for a body that took over ``seconds`` in all (retried like any other)."""
    return httpx.ReadTimeout(f"reading the answer's body took over {seconds:g} s")


def check_declared(length: int | None) -> None:
    """Refuse a body whose declared ``Content-Length`` is over the cap, before reading it."""
    if length is not None and length > MAX_ANSWER_BYTES:
        raise too_large()


async def read_capped(chunks: AsyncIterator[bytes]) -> bytes:
    """The chunks joined; :class:`AnswerTooLarge` as soon as they pass the cap."""
    parts: list[bytes] = []
    size, cap = 0, MAX_ANSWER_BYTES
    async for chunk in chunks:
        size += len(chunk)
        if size > cap:
            raise too_large()
        parts.append(chunk)
    return b"".join(parts)


async def read_streamed(response: httpx.Response, seconds: float) -> httpx.Response:
    """Read the body of a streamed answer from an httpx transport within ``seconds`` and the
    size cap; the answer, read and decoded. The stream is closed in any case.

    :raises httpx.ReadTimeout: the body took over ``seconds``
    :raises AnswerTooLarge: the body is over the cap, declared, on the wire or decoded
    """
    try:
        if len(response.content) > MAX_ANSWER_BYTES:  # read already: a test's transport
            raise too_large(decoded=True)
        return response
    except httpx.ResponseNotRead:
        pass
    try:
        declared = response.headers.get("content-length", "")
        check_declared(int(declared) if declared.isdigit() else None)
        with anyio.move_on_after(seconds) as reading:
            raw = await read_capped(response.aiter_raw())
        if reading.cancelled_caught:
            raise answer_deadline_error(seconds)
    finally:
        await response.aclose()
    return decoded_response(response.status_code, response.headers.raw, raw)


def decoded_response(status: int, headers: list[tuple[bytes, bytes]], raw: bytes) -> httpx.Response:
    """The answer as a read ``httpx.Response``: httpx decodes ``raw`` (so a broken gzip body
    is its ``DecodingError``), in pieces, and the decoded size is capped as the raw one was.

    A body with no ``Content-Encoding`` (the emulator's, most of Courier's) is taken as it
    is, with no second look."""
    if not any(name.lower() == b"content-encoding" for name, _ in headers):
        return httpx.Response(status, headers=headers, content=raw)
    streamed = httpx.Response(status, headers=headers, stream=httpx.ByteStream(raw))
    parts: list[bytes] = []
    size, cap = 0, MAX_ANSWER_BYTES
    for part in streamed.iter_bytes():
        size += len(part)
        if size > cap:
            raise too_large(decoded=True)
        parts.append(part)
    # The decoded bytes, under the headers minus the encoding they no longer have.
    plain = [
        (k, v) for k, v in headers if k.lower() not in (b"content-encoding", b"content-length")
    ]
    return httpx.Response(status, headers=plain, content=b"".join(parts))
