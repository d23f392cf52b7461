"""A small HTTP/1.1 load generator: pre-encoded requests over keep-alive connections.

Building multipart bodies per request (as httpx does) costs the client as much CPU as the server
spends answering; on a 2-core machine that would measure the client. Here every request is encoded
once, and a response is read by its Content-Length alone.
"""

import asyncio
import time
import uuid
from dataclasses import dataclass, field


def multipart_request(host: str, port: int, path: str, field_name: str, filename: str, data: bytes,
                      headers: dict | None = None) -> bytes:
    return multipart_form_request(host, port, path, {}, field_name, filename, data, headers)


def multipart_form_request(host: str, port: int, path: str, fields: dict[str, str], field_name: str, filename: str,
                           data: bytes, headers: dict | None = None) -> bytes:
    """multipart_request with text fields before the file (/embed's model, /analyze's tasks_json)."""
    boundary = uuid.uuid4().hex
    text = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                   for k, v in fields.items())
    body = text.encode() + (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{filename}\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}",
            f"Content-Type: multipart/form-data; boundary={boundary}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Result:
    latencies: list = field(default_factory=list)
    indices: list = field(default_factory=list)  # which of `requests` each latency belongs to
    statuses: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)  # (status, body) of the first few non-200 answers
    seconds: float = 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds


async def _read_response(reader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:  # say so plainly instead of an IndexError below
        raise ConnectionError("the server closed the connection without answering")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def run(host: str, port: int, requests: list[bytes], concurrency: int, total: int) -> Result:
    """Send `total` requests, cycling through `requests`, from `concurrency` connections."""
    result = Result()
    counter = iter(range(total))

    async def client():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in counter:
                start = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, body = await _read_response(reader)
                result.latencies.append(time.perf_counter() - start)
                result.indices.append(i % len(requests))
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status != 200 and len(result.errors) < 5:
                    result.errors.append((status, body[:300]))
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result


async def exchange(host: str, port: int, request: bytes) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body), to check an answer's content before a load."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        return await _read_response(reader)
    finally:
        writer.close()
