"""Command-line client for the image server.

    python client.py [PATH|URL]                  # same as `stats`, default snowman.png
    python client.py stats photo.jpg --method geometric
    python client.py --url http://host:8010 --api-key KEY stats https://example.com/a.jpg
    python client.py analyze photo.jpg --task embed_clip_vit_b_32 --task detect_bounding_box:prominent_face
    python client.py analyze photo.jpg --tasks tasks.json
    python client.py embed photo.jpg --model mobilenet_v2 --normalize
    python client.py caption-folder photos/ --max-length 40
    python client.py train-classifier --collection-id 7 --positives yes/ --negatives no/
    python client.py index photos/ --prefix holiday --metadata '{"album": "2024"}' --concurrency 4
    python client.py search photo.jpg [--no-orientations]      # near-duplicates by signature (/search)
    python client.py search photo.jpg --similar --limit 10     # similar images by embedding (/find_similar/)
    python client.py compare a.jpg b.jpg
    python client.py remove holiday/beach/1.jpg
    python client.py remove-bg photos/ portrait.jpg -o cutouts/ --model u2netp   # -> cutouts/<name>.png
    python client.py records add photo.jpg --name "Beach"       # the gallery, as the user the cookie names
    python client.py records list | records rename ID "New name" | records delete ID

Prints the server's JSON on stdout (pipe it to jq); on any error prints one line on stderr and exits 1.
The server address comes from --url, else IMAGESERVER_URL, else http://127.0.0.1:$PORT (8010).
"""

import argparse
import hashlib
import json
import os
import sys
import threading
from http.cookies import CookieError, SimpleCookie
from urllib.parse import quote, urlsplit
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import httpx

from analysis.operations import TARGETS
from atomic_files import write_atomically
from models import catalogue
from settings import AVERAGING_METHODS

COMMANDS = ("stats", "analyze", "embed", "caption-folder", "train-classifier", "index", "search", "compare", "remove",
            "remove-bg", "records")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".mpo")


class ClientError(Exception):
    """Anything that ends the command: its message is the one line the user sees."""


def finish_run(summary: dict, interrupted: bool, failed: dict, total: int, kept: str) -> dict:
    """The end of a run over many images: on a failure or Ctrl+C the summary is printed before the one-line
    error (exit 1); what was `kept` (added, written) stays, and the same command again goes on from there."""
    if interrupted or failed:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    if interrupted:
        raise ClientError(f"interrupted: what is {kept} stays; the same command again skips it and goes on")
    if failed:
        raise ClientError(f"{len(failed)} of {total} images failed (see above)")
    return summary


def default_url() -> str:
    return os.environ.get("IMAGESERVER_URL") or f"http://127.0.0.1:{os.environ.get('PORT', '8010')}"


def post_image(client: httpx.Client, path: str, field: str, source: str, extra: dict, url_field: str | None = None) -> dict:
    """POST an image given as a local path (multipart upload) or an http(s) URL (the server fetches it)."""
    if source.startswith(("http://", "https://")):
        response = client.post(path, json={url_field or field: source, **extra})
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
        # /find_similar/ answers {"error", "detail"} (often the same text), every other route {"detail"}
        if isinstance(body, dict):
            parts = [str(body[k]) for k in ("error", "detail") if body.get(k)]
            detail = ": ".join(dict.fromkeys(parts)) or json.dumps(body)
        else:
            detail = response.text[:200]
        raise ClientError(f"HTTP {response.status_code}: {detail}")
    if body is None:
        raise ClientError(f"HTTP {response.status_code}: the answer is not JSON")
    return body


def cmd_stats(client: httpx.Client, args) -> dict:
    extra = {"averaging_method": args.method} if args.method else {}
    return post_image(client, "/stats", "content", args.image, extra)


def task_from_flag(text: str) -> dict:
    """TYPE[:TARGET][,key=value...] -> a task; values that look like integers become integers."""
    head, *pairs = text.split(",")
    kind, _, target = head.partition(":")
    params = {"target": target} if target else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ClientError(f"--task {text}: expected key=value after the comma, got {pair!r}")
        params[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return {"operation_id": head.replace(":", "_"), "type": kind, "params": params}


def cmd_analyze(client: httpx.Client, args) -> dict:
    tasks = [task_from_flag(t) for t in args.task or []]
    if args.tasks:
        try:
            tasks += json.loads(Path(args.tasks).read_text())
        except (OSError, ValueError) as exc:
            raise ClientError(f"{args.tasks}: {exc}") from None
    if not tasks:
        raise ClientError("give at least one --task TYPE[:TARGET] or --tasks FILE.json")
    return post_image(client, "/analyze", "image_file", args.image, {"tasks_json": json.dumps(tasks)}, "image_url")


def cmd_embed(client: httpx.Client, args) -> dict:
    extra = {"model": args.model, "normalize": "true" if args.normalize else "false"}
    return post_image(client, "/embed", "image_file", args.image, extra, "image_url")


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def cmd_caption_folder(client: httpx.Client, args) -> dict:
    """Write NAME.txt beside each image; existing captions are kept unless --force."""
    from tqdm import tqdm

    folder = Path(args.folder)
    if not folder.is_dir():
        raise ClientError(f"{args.folder}: not a folder")
    todo = [p for p in image_files(folder) if args.force or not p.with_suffix(".txt").exists()]
    task = {"operation_id": "caption", "type": "describe_image",
            "params": {"max_length": args.max_length, "target": args.target}}
    written, failed = 0, {}
    for image in tqdm(todo, desc="captioning", unit="image", file=sys.stderr):
        try:
            result = post_image(client, "/analyze", "image_file", str(image), {"tasks_json": json.dumps([task])})
            outcome = result["results"]["caption"]
            if outcome["status"] != "success":
                raise ClientError(outcome["error_message"])
        except ClientError as exc:
            failed[str(image)] = str(exc)
            continue
        write_atomically(image.with_suffix(".txt"), (outcome["data"] + "\n").encode("utf-8"))  # never half a caption
        written += 1
    summary = {"written": written, "skipped_existing": len(image_files(folder)) - len(todo), "failed": failed}
    if failed:
        json.dump(summary, sys.stdout, indent=2)
        raise ClientError(f"{len(failed)} of {len(todo)} images failed (see above)")
    return summary


def folder_embeddings(client: httpx.Client, folder: str, model: str) -> "list":
    from tqdm import tqdm

    files = image_files(Path(folder))
    if not files:
        raise ClientError(f"{folder}: no images found")
    vectors = []
    for image in tqdm(files, desc=f"embedding {folder}", unit="image", file=sys.stderr):
        vectors.append(post_image(client, "/embed", "image_file", str(image), {"model": model})["embedding"])
    return vectors


def cmd_train_classifier(client: httpx.Client, args) -> dict:
    """Embed two folders through the server (or read an .npz), train, report on a held-out split, save."""
    import numpy as np

    from classifier_training import train, write

    if args.embeddings:
        with np.load(args.embeddings) as data:
            positives, negatives = data["positives"], data["negatives"]
    elif args.positives and args.negatives:
        positives = np.asarray(folder_embeddings(client, args.positives, args.model), dtype=np.float32)
        negatives = np.asarray(folder_embeddings(client, args.negatives, args.model), dtype=np.float32)
    else:
        raise ClientError("give --positives DIR and --negatives DIR, or --embeddings FILE.npz")
    embedding_type = "embed_" + args.model if not args.model.startswith("embed_") else args.model
    try:
        model, report = train(positives, negatives)
        path = write(args.classifier_dir, args.collection_id, model, embedding_type, args.target, int(positives.shape[1]))
    except ValueError as exc:  # too few examples, a bad id or target: the message says which
        raise ClientError(str(exc)) from None
    return {"collection_id": args.collection_id, "model_file": str(path), "report": report}


# ---------------------------------------------------------------- the image index (near-duplicate, /find_similar/)

def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def image_form(sources: list[tuple[str, str, str]]) -> tuple[dict, dict]:
    """[(source, file_field, url_field)] -> (files, data): local files are uploaded, URLs go as form
    fields for the server to fetch (the near-duplicate routes take form fields, not JSON)."""
    files, data = {}, {}
    for source, file_field, url_field in sources:
        if is_url(source):
            data[url_field] = source
            continue
        file = Path(source).expanduser()
        if not file.is_file():
            raise ClientError(f"{source}: no such file")
        files[file_field] = (file.name, file.read_bytes())
    return files, data


def match_answer(response: httpx.Response) -> dict:
    """The near-duplicate routes' envelope {status, error, method, result}: anything but "ok" is an error
    naming the server's reasons."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "status" in body and "result" in body:
        if body["status"] != "ok" or response.status_code >= 400:
            reasons = "; ".join(str(e) for e in body.get("error") or []) or "status " + str(body["status"])
            raise ClientError(f"HTTP {response.status_code}: {reasons}")
        return body
    return answer(response)  # not an envelope (401, 413 from the shared layer): {"detail"}


def cmd_search(client: httpx.Client, args) -> dict:
    if args.similar:
        files, data = image_form([(args.image, "file", "image_url")])
        data |= {k: str(v) for k, v in (("limit", args.limit), ("model", args.model)) if v is not None}
        return answer(client.post("/find_similar/", files=files, data=data))
    files, data = image_form([(args.image, "image", "url")])
    data["all_orientations"] = "false" if args.no_orientations else "true"
    body = match_answer(client.post("/search", files=files, data=data))
    if args.limit is not None:  # /search has no limit of its own: keep the best ones here
        body["result"] = body["result"][: args.limit]
    return body


def cmd_compare(client: httpx.Client, args) -> dict:
    files, data = image_form([(args.first, "image1", "url1"), (args.second, "image2", "url2")])
    return match_answer(client.post("/compare", files=files, data=data))


def cmd_remove(client: httpx.Client, args) -> dict:
    return match_answer(client.request("DELETE", "/delete", data={"filepath": args.filepath}))


def sniff_image(file: Path) -> bool:
    """True when the first bytes are those of a format the server reads (JPEG and MPO, PNG, GIF, WebP, BMP,
    TIFF): the name alone would index a text file called x.jpg and miss a photo saved without a suffix."""
    with file.open("rb") as handle:
        head = handle.read(18)
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    # "BM" alone starts too many text files: also ask for a known DIB header size
    return head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124)


def walk_files(folder: Path) -> list[Path]:
    """Every regular file under folder, sorted, skipping hidden files and folders (.git, .thumbnails, ...)."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / n for n in sorted(names) if not n.startswith(".")]
    return [f for f in found if f.is_file()]


def metadata_from_flags(values: list[str]) -> dict:
    merged = {}
    for text in values or []:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ClientError(f"--metadata {text!r}: not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ClientError(f"--metadata {text!r}: expected a JSON object")
        merged.update(value)
    return merged


def index_one(client: httpx.Client, file: Path, filepath: str, metadata: dict, force: bool) -> str:
    """Add one file unless the index already holds the same bytes (and metadata) under filepath."""
    if not sniff_image(file):
        return "ignored"
    data = file.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if not force:
        found = match_answer(client.get("/get", params={"filepath": filepath}))["result"]
        stored = found[0] if found else None
        if stored and stored.get("sha256") == sha and all(
            (stored.get("metadata") or {}).get(k) == v for k, v in metadata.items()
        ):
            return "skipped"
    form = {"filepath": filepath, "metadata": json.dumps(metadata)}
    match_answer(client.post("/add", files={"image": (file.name, data)}, data=form))
    return "added"


def cmd_index(client: httpx.Client, args) -> dict:
    """Add every image under a folder; a second run skips what is already indexed, so a stopped run resumes."""
    from tqdm import tqdm

    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        raise ClientError(f"{args.folder}: not a folder")
    if args.concurrency < 1:
        raise ClientError("--concurrency must be at least 1")
    metadata = metadata_from_flags(args.metadata)
    match_answer(client.get("/ping"))  # an unreachable server or a wrong key is one error, not N failures
    prefix = args.prefix.strip("/") + "/" if args.prefix and args.prefix.strip("/") else ""
    files = walk_files(folder)
    counts = {"added": 0, "skipped": 0, "ignored": 0}
    failed: dict[str, str] = {}
    lock = threading.Lock()

    def work(file: Path) -> None:
        filepath = prefix + file.relative_to(folder).as_posix()
        try:
            outcome = index_one(client, file, filepath, metadata, args.force)
        except (ClientError, OSError, httpx.HTTPError) as exc:
            with lock:
                failed[filepath] = str(exc) or type(exc).__name__
        else:
            with lock:
                counts[outcome] += 1

    pool = ThreadPoolExecutor(max_workers=args.concurrency)
    interrupted = False
    try:
        with tqdm(total=len(files), desc="indexing", unit="file", file=sys.stderr) as bar:
            for _ in as_completed([pool.submit(work, f) for f in files]):
                bar.update()
                bar.set_postfix(counts | {"failed": len(failed)}, refresh=False)
    except KeyboardInterrupt:  # Ctrl+C: the requests in flight finish, nothing new starts
        interrupted = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    with lock:
        summary = {**counts, "failed": dict(sorted(failed.items()))}
    return finish_run(summary, interrupted, failed, len(files) - counts["ignored"], "added")


# ---------------------------------------------------------------- background removal and the gallery records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_OUTPUT_DIR = "background-removed"


def removal_fields(args) -> dict:
    """remove-bg's and records add's option flags -> the form fields /remove-background and /records read."""
    fields = {"model": args.model} if args.model else {}
    for flag in ("alpha_matting", "only_mask", "post_process_mask", "crop"):
        if getattr(args, flag):
            fields[flag] = "true"
    if args.bgcolor:
        fields["bgcolor"] = args.bgcolor
    return fields


def removal_inputs(paths: list[str], output_dir: Path) -> tuple[list[tuple[Path, Path]], int]:
    """[(input, output)] for every file named and every image under every folder named, and how many
    files under the folders were not images. A folder's images keep their relative folders under
    output_dir; two inputs that would write the same <name>.png write <name.suffix>.png instead."""
    planned: dict[Path, tuple[Path, Path]] = {}  # by resolved path: a file named twice is done once
    ignored = 0
    out = output_dir.resolve()
    for given in paths:
        source = Path(given).expanduser()
        if source.is_dir():
            if source.resolve() == out:
                raise ClientError(f"{given}: -o is the folder itself; its outputs would be inputs on the next run")
            for file in walk_files(source):
                if file.resolve().is_relative_to(out):  # -o inside the folder: never take outputs as inputs
                    continue
                if not sniff_image(file):
                    ignored += 1
                    continue
                planned.setdefault(file.resolve(), (file, Path(file.relative_to(source).parent)))
        elif source.is_file():
            planned.setdefault(source.resolve(), (source, Path()))
        else:
            raise ClientError(f"{given}: no such file or folder")
    planned = list(planned.values())
    targets = [output_dir / sub / (file.stem + ".png") for file, sub in planned]
    clashes = {t for t in targets if targets.count(t) > 1}
    pairs = []
    for (file, sub), target in zip(planned, targets):
        if target in clashes:
            target = output_dir / sub / (file.name + ".png")
        pairs.append((file, target))
    return pairs, ignored


def remove_background(client: httpx.Client, file: Path, fields: dict) -> bytes:
    """POST one image to /remove-background; the PNG it answers."""
    with file.open("rb") as handle:
        response = client.post("/remove-background", files={"file": (file.name, handle)}, data=fields,
                               headers={"Accept": "image/png"})
    if response.status_code >= 400:
        answer(response)  # raises the server's one-line reason
    if not response.content.startswith(PNG_MAGIC):
        raise ClientError(f"HTTP {response.status_code}: expected a PNG, got "
                          f"{response.headers.get('content-type') or 'no content type'}")
    return response.content


def cmd_remove_bg(client: httpx.Client, args) -> dict:
    """Write <name>.png with the background removed, for every file and every image under every folder given."""
    from tqdm import tqdm

    if args.concurrency < 1:
        raise ClientError("--concurrency must be at least 1")
    output_dir = Path(args.output_dir).expanduser()
    pairs, ignored = removal_inputs(args.paths, output_dir)
    if not pairs:
        raise ClientError("no images found in " + ", ".join(args.paths))
    for source, target in pairs:
        if source.resolve() == target.resolve():
            raise ClientError(f"{source}: the output would replace the input; choose another -o")
    todo = [(s, t) for s, t in pairs if args.force or not t.exists()]
    fields = removal_fields(args)
    written, failed = 0, {}
    lock = threading.Lock()

    def work(source: Path, target: Path) -> None:
        nonlocal written
        try:
            png = remove_background(client, source, fields)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(target, png)  # never half a PNG where a re-run would skip it
        except (ClientError, OSError, httpx.HTTPError) as exc:
            with lock:
                failed[str(source)] = str(exc) or type(exc).__name__
        else:
            with lock:
                written += 1

    pool = ThreadPoolExecutor(max_workers=args.concurrency)
    interrupted = False
    try:
        with tqdm(total=len(todo), desc="removing backgrounds", unit="image", file=sys.stderr) as bar:
            for _ in as_completed([pool.submit(work, s, t) for s, t in todo]):
                bar.update()
    except KeyboardInterrupt:  # Ctrl+C: the requests in flight finish, nothing new starts
        interrupted = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    with lock:
        summary = {"written": written, "skipped_existing": len(pairs) - len(todo), "ignored": ignored,
                   "output_dir": str(output_dir), "failed": dict(sorted(failed.items()))}
    return finish_run(summary, interrupted, failed, len(todo), "written")


def default_cookie_file() -> str:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return os.environ.get("IMAGESERVER_COOKIE_FILE") or str(Path(config) / "imageserver" / "cookies.json")


class CookieFile:
    """The cookies each server set, kept between calls in a JSON file (0600): {origin: {name: value}}.

    The records belong to the user the server's signed cookie names; without it every call would be a new
    user with an empty gallery. The jar of httpx lives for one process only, so this one sends the kept
    cookies as the Cookie header and takes what every answer's Set-Cookie says back into the file.
    """

    def __init__(self, path: str, url: str):
        self.path = Path(path).expanduser()
        parts = urlsplit(url)
        self.origin = f"{parts.scheme}://{parts.netloc}".lower()
        try:
            kept = json.loads(self.path.read_text())
        except FileNotFoundError:
            kept = {}
        except (OSError, ValueError) as exc:
            raise ClientError(f"{self.path}: cannot read the cookie file ({exc})") from None
        self.all = kept if isinstance(kept, dict) else {}
        self.cookies = dict(self.all.get(self.origin) or {})
        self.changed = False

    def attach(self, client: httpx.Client) -> None:
        self._header(client)
        client.event_hooks["response"] = [*client.event_hooks["response"], lambda r: self._take(client, r)]

    def _header(self, client: httpx.Client) -> None:
        client.cookies.clear()  # only what this file holds is sent, once
        if self.cookies:
            client.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        else:
            client.headers.pop("Cookie", None)

    def _take(self, client: httpx.Client, response: httpx.Response) -> None:
        for line in response.headers.get_list("set-cookie"):
            jar = SimpleCookie()
            try:
                jar.load(line)
            except CookieError:
                continue
            for name, morsel in jar.items():
                if morsel["max-age"] in ("0", "-1") or not morsel.value:
                    self.changed |= self.cookies.pop(name, None) is not None
                elif self.cookies.get(name) != morsel.value:
                    self.cookies[name] = morsel.value
                    self.changed = True
        self._header(client)

    def save(self) -> None:
        if not self.changed:
            return
        self.all[self.origin] = self.cookies
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self.path, (json.dumps(self.all, indent=2) + "\n").encode("utf-8"), mode=0o600)


def record_answer(response: httpx.Response, record_id: str | None = None) -> dict:
    """A records route's JSON; a 204 (nothing to say) becomes {"id", "deleted": true}."""
    if response.status_code == 204 or (response.status_code < 400 and not response.content):
        return {"id": record_id, "deleted": True}
    return answer(response)


def cmd_records(client: httpx.Client, args) -> dict:
    cookies = CookieFile(args.cookie_file, args.url)
    cookies.attach(client)
    try:
        if args.action == "list":
            return answer(client.get("/records"))
        if args.action == "add":
            file = Path(args.image).expanduser()
            if not file.is_file():
                raise ClientError(f"{args.image}: no such file")
            with file.open("rb") as handle:
                data = {"name": args.name or file.stem, **removal_fields(args)}
                return answer(client.post("/records", files={"image": (file.name, handle)}, data=data))
        path = f"/records/{quote(args.id, safe='')}"
        if args.action == "rename":
            return answer(client.patch(path, json={"name": args.name}))
        return record_answer(client.delete(path), args.id)
    finally:
        cookies.save()  # a new user's cookie is kept even when the call itself failed


def add_removal_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", help="background-removal model (the server's BACKGROUND_MODEL otherwise)")
    command.add_argument("--alpha-matting", action="store_true", help="refine the mask's edges")
    command.add_argument("--only-mask", action="store_true", help="write the mask, not the cut-out")
    command.add_argument("--post-process-mask", action="store_true", help="smooth the mask")
    command.add_argument("--bgcolor", metavar="R,G,B,A", help="fill the removed background with this colour")
    command.add_argument("--crop", action="store_true", help="crop to the subject's bounding box")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description="Client for the image server", epilog="Default command: stats")
    top.add_argument("--url", default=default_url(), help="server address (IMAGESERVER_URL)")
    top.add_argument("--api-key", default=os.environ.get("API_KEY"), help="sent as X-API-Key (API_KEY)")
    top.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer")
    commands = top.add_subparsers(dest="command", required=True)
    stats = commands.add_parser("stats", help="EXIF, GPS, average and dominant colour")
    stats.add_argument("image", nargs="?", default="snowman.png", help="a file path or an http(s) URL")
    stats.add_argument("--method", choices=AVERAGING_METHODS, help="average colour method")
    stats.set_defaults(run=cmd_stats)

    analyze = commands.add_parser("analyze", help="run /analyze tasks on one image")
    analyze.add_argument("image", help="a file path or an http(s) URL")
    analyze.add_argument("--task", action="append", metavar="TYPE[:TARGET][,k=v]", help="repeatable")
    analyze.add_argument("--tasks", metavar="FILE.json", help="a JSON list of {operation_id, type, params}")
    analyze.set_defaults(run=cmd_analyze)

    embed = commands.add_parser("embed", help="one embedding from /embed")
    embed.add_argument("image", help="a file path or an http(s) URL")
    embed.add_argument("--model", default="clip_vit_b_32", choices=catalogue.names("embedder"))
    embed.add_argument("--normalize", action="store_true", help="L2-normalise the vector")
    embed.set_defaults(run=cmd_embed)

    caption = commands.add_parser("caption-folder", help="write NAME.txt captions beside every image in a folder")
    caption.add_argument("folder")
    caption.add_argument("--max-length", type=int, default=50)
    caption.add_argument("--target", default="whole_image", choices=TARGETS)
    caption.add_argument("--force", action="store_true", help="overwrite existing captions")
    caption.set_defaults(run=cmd_caption_folder)

    trainer = commands.add_parser("train-classifier", help="train a collection classifier over embeddings")
    trainer.add_argument("--collection-id", required=True)
    trainer.add_argument("--positives", metavar="DIR")
    trainer.add_argument("--negatives", metavar="DIR")
    trainer.add_argument("--embeddings", metavar="FILE.npz", help="arrays 'positives' and 'negatives'")
    trainer.add_argument("--model", default="clip_vit_b_32", choices=catalogue.names("embedder"))
    trainer.add_argument("--target", default="whole_image", choices=TARGETS)
    trainer.add_argument("--classifier-dir", default=os.environ.get("CLASSIFIER_DIR") or str(
        Path(os.environ.get("MODEL_DIR", Path.home() / ".cache" / "imageserver" / "models")) / "classifiers"))
    trainer.set_defaults(run=cmd_train_classifier)

    index = commands.add_parser("index", help="add every image under a folder to the index (resumable)")
    index.add_argument("folder")
    index.add_argument("--prefix", default="", help="filepath = PREFIX/path relative to the folder")
    index.add_argument("--metadata", action="append", metavar="JSON", help="a JSON object stored with every image "
                       "(repeatable, merged left to right)")
    index.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    index.add_argument("--force", action="store_true", help="add again even when the same bytes are indexed")
    index.set_defaults(run=cmd_index)

    search = commands.add_parser("search", help="near-duplicates by signature (/search), or --similar by embedding")
    search.add_argument("image", help="a file path or an http(s) URL")
    search.add_argument("--no-orientations", action="store_true",
                        help="match the image as it is, not turned or mirrored")
    search.add_argument("--similar", action="store_true", help="similar images by embedding (/find_similar/)")
    search.add_argument("--limit", type=int, help="at most this many matches")
    search.add_argument("--model", help="with --similar: the embedding model (the server's default otherwise)")
    search.set_defaults(run=cmd_search)

    compare = commands.add_parser("compare", help="signature similarity of two images (0-100)")
    compare.add_argument("first", help="a file path or an http(s) URL")
    compare.add_argument("second", help="a file path or an http(s) URL")
    compare.set_defaults(run=cmd_compare)

    remove = commands.add_parser("remove", help="delete an image from the index by its filepath")
    remove.add_argument("filepath", help="the filepath it was indexed under")
    remove.set_defaults(run=cmd_remove)

    remove_bg = commands.add_parser("remove-bg", help="cut out the subject of every image: <name>.png in -o DIR")
    remove_bg.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders (walked)")
    remove_bg.add_argument("-o", "--output-dir", default=DEFAULT_OUTPUT_DIR,
                           help=f"where <name>.png goes, a folder's subfolders kept (default ./{DEFAULT_OUTPUT_DIR})")
    remove_bg.add_argument("--force", action="store_true", help="overwrite outputs that exist")
    remove_bg.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    add_removal_flags(remove_bg)
    remove_bg.set_defaults(run=cmd_remove_bg)

    records = commands.add_parser("records", help="your gallery of cut-outs (the user a kept cookie names)")
    records.add_argument("--cookie-file", default=default_cookie_file(),
                         help="where the server's cookie is kept between calls (IMAGESERVER_COOKIE_FILE; "
                              "default ~/.config/imageserver/cookies.json)")
    actions = records.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="your records, newest first")
    add = actions.add_parser("add", help="upload an image: kept with its cut-out")
    add.add_argument("image", help="a file path")
    add.add_argument("--name", help="the record's name (default: the file's name without suffix)")
    add_removal_flags(add)
    rename = actions.add_parser("rename", help="give a record a new name")
    rename.add_argument("id")
    rename.add_argument("name")
    delete = actions.add_parser("delete", help="delete a record and its images")
    delete.add_argument("id")
    records.set_defaults(run=cmd_records)
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
