"""Command-line client for the image server.

    python client.py [PATH|URL]                  # same as `stats`, default snowman.png
    python client.py stats photo.jpg --method geometric
    python client.py --url http://host:8010 --api-key KEY stats https://example.com/a.jpg

Prints the server's JSON on stdout (pipe it to jq); on any error prints one line on stderr and exits 1.
The server address comes from --url, else IMAGESERVER_URL, else http://127.0.0.1:$PORT (8010).
"""

import argparse
import json
import os
import sys
from pathlib import Path

import httpx

COMMANDS = ("stats",)


class ClientError(Exception):
    """Anything that ends the command: its message is the one line the user sees."""


def default_url() -> str:
    return os.environ.get("IMAGESERVER_URL") or f"http://127.0.0.1:{os.environ.get('PORT', '8010')}"


def post_image(client: httpx.Client, path: str, field: str, source: str, extra: dict) -> dict:
    """POST an image given as a local path (multipart upload) or an http(s) URL (the server fetches it)."""
    if source.startswith(("http://", "https://")):
        response = client.post(path, json={field: source, **extra})
    else:
        file = Path(source).expanduser()
        if not file.is_file():
            raise ClientError(f"{source}: no such file")
        with file.open("rb") as handle:
            response = client.post(path, files={field: (file.name, handle)}, data=extra)
    return answer(response)


def answer(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        detail = body.get("detail") if isinstance(body, dict) else response.text[:200]
        raise ClientError(f"HTTP {response.status_code}: {detail}")
    if body is None:
        raise ClientError(f"HTTP {response.status_code}: the answer is not JSON")
    return body


def cmd_stats(client: httpx.Client, args) -> dict:
    extra = {"averaging_method": args.method} if args.method else {}
    return post_image(client, "/stats", "content", args.image, extra)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description="Client for the image server", epilog="Default command: stats")
    top.add_argument("--url", default=default_url(), help="server address (IMAGESERVER_URL)")
    top.add_argument("--api-key", default=os.environ.get("API_KEY"), help="sent as X-API-Key (API_KEY)")
    top.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer")
    commands = top.add_subparsers(dest="command", required=True)
    stats = commands.add_parser("stats", help="EXIF, GPS, average and dominant colour")
    stats.add_argument("image", nargs="?", default="snowman.png", help="a file path or an http(s) URL")
    stats.add_argument("--method", choices=("arithmetic", "geometric", "harmonic"), help="average colour method")
    stats.set_defaults(run=cmd_stats)
    return top


def with_default_command(argv: list[str]) -> list[str]:
    """`client.py photo.jpg` and bare `client.py` mean `client.py stats ...`."""
    value_flags = {"--url", "--api-key", "--timeout"}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] in ("-h", "--help"):
            return argv
        i += 2 if argv[i] in value_flags else 1
    if i < len(argv) and argv[i] in COMMANDS:
        return argv
    return argv[:i] + ["stats"] + argv[i:]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(with_default_command(sys.argv[1:] if argv is None else argv))
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    try:
        with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as client:
            result = args.run(client, args)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
