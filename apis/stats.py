"""POST /stats: EXIF (with GPS) and average and dominant colour, in the fields existing /stats clients parse.

Input: multipart field `content` (a file, or text holding a URL or base64), JSON {"content": ...}, or
a raw image body. Optional `averaging_method` (arithmetic | geometric | harmonic) per request.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from apis.base import ImageAPI, error_response
from apis.handoff import Blob
from apis.request_body import as_http_error, image_bytes, read_fields
from errors import InputError
from stats.image_stats import ImageStats, StatsInput
from settings import AVERAGING_METHODS


@dataclass(frozen=True)
class StatsRequest:
    image: Blob
    averaging_method: str | None


async def read_stats_request(request: Request):
    """The HTTP-side half of /stats: read the body and fetch a URL, before the request is queued."""
    settings = request.app.state.settings
    try:
        fields = await read_fields(request, raw_field="content")
        method = fields.get("averaging_method")
        if method is not None and method not in AVERAGING_METHODS:
            shown = repr(method)[:40] if isinstance(method, str) else type(method).__name__
            raise InputError(422, f"averaging_method {shown} is not one of {', '.join(AVERAGING_METHODS)}")
        data = await image_bytes(fields, "content", settings)
    except InputError as exc:
        raise as_http_error(exc) from None
    with request.app.state.handoff.hold(data) as blob:
        yield StatsRequest(blob, method)


class StatsAPI(ImageAPI):
    def __init__(self, settings):
        super().__init__(
            settings,
            api_path="/stats",
            max_batch_size=settings.stats_max_batch_size,
            batch_timeout=settings.stats_batch_timeout,
        )

    def setup(self, device):
        from models.runtime import keep_large_buffers_off_the_heap

        # pure CPU work: the device (cpu or cuda:N, the accelerator is server-wide) is not used
        keep_large_buffers_off_the_heap()
        self.model = ImageStats(self.settings.cache_dir)

    def decode_request(self, request: Annotated[StatsRequest, Depends(read_stats_request)]):
        image = self.decode(request.image, max_side=self.settings.thumbnail_size)
        if isinstance(image, InputError):
            return image
        return StatsInput(image, request.averaging_method or self.settings.averaging_method)

    def infer(self, x):
        return self.from_batch(self.run_each(self.as_batch(x), self.model.one))

    def encode_response(self, output):
        return output if isinstance(output, dict) else error_response(output)
