"""POST /embed: one image, one embedding model, for embedding pipelines. Batched per model.

Input: JSON {"image_url" | "image_base64", "model", "normalize"} or multipart `image_file` (or `content`)
with form fields `model` and `normalize`. Answer: {"model", "dim", "normalized", "embedding": [...]}.
"""

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, Request

from apis.analyze import image_field
from apis.base import ImageAPI, ServerFault, error_response
from apis.handoff import Blob
from apis.model_status import write_counters, write_statuses
from apis.request_body import as_http_error, image_bytes, read_fields, shown, yes_no
from errors import InputError
from models.catalogue import embedders, names, run_grouped

DEFAULT_MODEL = "clip_vit_b_32"
# A large JPEG is decoded in draft mode (1/2, 1/4 or 1/8 scale) down to twice the model's input side,
# then the model's own antialiased resize takes it the rest of the way. A 12-megapixel photo decodes
# ~10x faster. Measured on the corpus re-encoded as 1-7 MP JPEGs (MobileNetV2, real weights): cosine
# to the full-decode embedding >= 0.9989 at 2x; at 1x (drafting right down to 256 px) as low as 0.979.
# /analyze decodes in full (it needs the pixels for boxes and crops): its whole-image embeddings of
# a large JPEG agree with /embed's to that cosine, not bit for bit.
DRAFT_OVERSAMPLE = 2


@dataclass(frozen=True)
class EmbedRequest:
    image: Blob
    model: str
    normalize: bool


def _model_name(value) -> str:
    """A model name (text; a list or an object is refused, not looked up)."""
    name = embedders().get(value, value) if isinstance(value, str) else None  # the /analyze type names work too
    if name not in names("embedder"):
        raise InputError(422, f"model {shown(value)} is not one of {', '.join(names('embedder'))}")
    return name


def _flag(value) -> bool:
    return yes_no(value, "normalize", 422, blank=False)  # an empty form field is the default, false


async def read_embed_request(request: Request):
    settings = request.app.state.settings
    try:
        fields = await read_fields(request, raw_field="image_file")
        model = _model_name(fields.get("model", DEFAULT_MODEL))
        normalize = _flag(fields.get("normalize", False))
        data = await image_bytes(fields, image_field(fields), settings)
    except InputError as exc:
        raise as_http_error(exc) from None
    with request.app.state.handoff.hold(data) as blob:
        yield EmbedRequest(blob, model, normalize)


class EmbedAPI(ImageAPI):
    def __init__(self, settings, status_dir: str):
        super().__init__(
            settings, api_path="/embed",
            max_batch_size=settings.embed_max_batch_size, batch_timeout=settings.embed_batch_timeout,
        )
        self.status_dir = status_dir

    def setup(self, device):
        from models.catalogue import load_models

        self.models, self.unavailable = load_models(names("embedder"), self.settings, device)
        self.counters = {}
        write_statuses(self.status_dir, names("embedder"), self.unavailable)

    def decode_request(self, request: Annotated[EmbedRequest, Depends(read_embed_request)]):
        if request.model not in self.models:
            return InputError(503, f"{request.model} is unavailable: {self.unavailable.get(request.model)}")
        side = self.models[request.model].input_side
        decoded = self.decode(request.image, min_side=side * DRAFT_OVERSAMPLE if side else None)
        if isinstance(decoded, InputError):
            return decoded
        return request, decoded.image.convert("RGB")

    def infer(self, x):
        items = self.as_batch(x)
        outputs = list(items)
        groups = {name: [i for i, item in enumerate(items) if isinstance(item, tuple) and item[0].model == name]
                  for name in self.models}
        vectors = run_grouped(self.models, {name: [items[i][1] for i in group] for name, group in groups.items()},
                              lambda name, exc: ServerFault(repr(exc)), self.counters)
        for name, found in vectors.items():
            for i, vector in zip(groups[name], found):
                outputs[i] = vector if isinstance(vector, Exception) else self._answer(items[i][0], vector)
        write_counters(self.status_dir, "embed", self.counters)
        return self.from_batch(outputs)

    @staticmethod
    def _answer(request: EmbedRequest, vector: np.ndarray) -> dict:
        vector = np.asarray(vector, dtype=np.float32)
        if request.normalize:
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return {"model": request.model, "dim": int(vector.shape[0]), "normalized": request.normalize,
                "embedding": vector.tolist()}

    def encode_response(self, output):
        return output if isinstance(output, dict) else error_response(output)
