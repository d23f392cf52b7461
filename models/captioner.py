"""Image captions with BLIP (transformers' BlipForConditionalGeneration), one `generate` per batch.

Decoding is greedy (num_beams=1) by default: it is deterministic, so a caption does not depend on
which other images share its batch, and it is several times faster than beam search. For beam search
(num_beams=4 with BLIP *large* in CAPTION_MODEL gives the captions /analyze clients got before), pass
`num_beams=4` to the constructor (or to `forward`).
"""

from PIL import Image

from models.base import ImageModel, ModelUnavailable
from models.preprocess import centre_window, processor_window
from models.weights import describe_failure, offline_guard, pretrained_source

DEFAULT_MAX_LENGTH = 50  # tokens, counting BLIP's start token: the length /analyze's clients expect by default


class Captioner(ImageModel):
    name = "captioner"
    kind = "captioner"
    description = "A caption (BLIP through transformers)"
    reads = ("CAPTION_MODEL", "MODEL_DIR", "ALLOW_DOWNLOADS")

    def __init__(self, settings, num_beams: int = 1):
        super().__init__(settings)
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        self.num_beams = num_beams
        self.model = None
        self.processor = None
        self.window = None  # set when the image processor resizes the short side (BLIP's resizes to a fixed square)

    def load(self, device: str) -> None:
        import torch

        offline_guard(self.settings)  # before transformers looks anything up
        name = self.settings.caption_model
        source, kwargs = pretrained_source(self.settings, name)
        # fp16 halves memory and time on a GPU; CPUs are slow (or wrong) in half precision
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        try:
            from transformers import AutoProcessor, BlipForConditionalGeneration

            processor = AutoProcessor.from_pretrained(source, **kwargs)
            model = BlipForConditionalGeneration.from_pretrained(source, dtype=dtype, **kwargs)
            model = model.to(device).eval()
        except Exception as exc:  # missing files, a non-BLIP folder, out of memory, ...
            raise describe_failure(exc, f"captioning model {name}") from None
        if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
            raise ModelUnavailable(f"captioning model {name}: {type(processor).__name__} has no tokenizer")
        self.model, self.processor, self.device = model, processor, device
        self.window = processor_window(processor.image_processor)

    def forward(self, images: list[Image.Image], max_length: int = DEFAULT_MAX_LENGTH,
                num_beams: int | None = None) -> list[str]:
        import torch

        with torch.inference_mode():
            return self._captions(images, max_length, num_beams)

    def _captions(self, images, max_length, num_beams) -> list[str]:
        if self.model is None:
            raise RuntimeError("Captioner.forward called before load()")
        if not images:
            return []
        if max_length < 2:  # the start token alone takes one position
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        bounded = [centre_window(im, *self.window) if self.window else im for im in images]
        inputs = self.processor(images=[im.convert("RGB") for im in bounded], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.model.dtype)
        ids = self.model.generate(
            pixel_values=pixels, max_length=max_length, num_beams=num_beams or self.num_beams,
            do_sample=False,
        )
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]
