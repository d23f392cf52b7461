"""Image statistics for /stats: EXIF with GPS, average and dominant colour. No weights, no HTTP."""

from dataclasses import dataclass

from images.decode import DecodedImage
from stats.colour import bin_table, colour_stats
from stats.exif import exif_to_json


@dataclass(frozen=True)
class StatsInput:
    image: DecodedImage  # decoded with max_side = the thumbnail size
    averaging_method: str


class ImageStats:
    """Statistics of one decoded image. There is nothing to batch on the device: callers loop, so that a
    failure stays with its own image."""

    name = "image_stats"

    def __init__(self, cache_dir: str | None = None):
        self.table = bin_table(cache_dir)

    def one(self, item: StatsInput) -> dict:
        decoded = item.image
        exif_data, gps = exif_to_json(decoded.exif)
        return {
            "exif_data": exif_data,
            "color_data": colour_stats(decoded.image, item.averaging_method, self.table),
            "gps": gps,
            "image": {"format": decoded.format, "width": decoded.width, "height": decoded.height},
        }
