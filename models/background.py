"""Background removal: rembg's ONNX sessions, found and loaded our way, giving what `rembg.remove` gives.

Each class below is one rembg session kind (`session_name`) and one catalogue line. `load` finds the
graph through models/weights.py (md5 checked), and opens it with onnxruntime on the worker's device with
its share of the cores (models/runtime.py's rule: TORCH_THREADS, or cores // (WORKERS_PER_DEVICE x model
capabilities)), so two workers never oversubscribe the CPU. `forward(images, removals)` returns, per image, exactly what
`rembg.remove(image, session=<this session>, <the same options>)` returns: rembg computes the mask and
rembg's own `remove` cuts it out (alpha matting, decontamination, background colour), so no option is
re-implemented here. `crop` is ours, applied last.

Batching: a U²-Net graph takes a fixed [1, 3, 320, 320]. Its batch axis can be made dynamic (dim 0 of
the inputs and outputs renamed, `onnx.checker` passes), and a batch gives outputs bit-identical to single
runs. On a 2-core CPU a batch of 8 takes as long as 8 single runs (u2netp on 2 threads, quiet machine:
1.86 s against 1.87 s) and never more CPU time (bench/README.md has the figures), and an accelerator
gains from it, so a U²-Net model runs its batch as one call wherever it runs; the other graphs (IS-Net,
BiRefNet) run image by image.
`batch_axis = False` on an instance, before `load`, runs a U²-Net image by image too (for measurements).

Differences from calling `rembg.remove` on the same Pillow image, both on purpose: the images come from
our decoder already upright, and an image that still carries an EXIF orientation (a PNG's text-chunk
EXIF the decoder did not strip) is not turned a second time; L and LA images are converted to RGB and
RGBA first (rembg's cutout fails on them).
"""

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from models import weights
from models.base import ImageModel, ModelUnavailable

log = logging.getLogger("imageserver.models")

EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Removal:
    """rembg.remove's options (its names without the alpha_matting_ prefix), and `crop`: cut the result to
    the subject's bounding box, the mask's non-zero pixels; a mask with no subject is not cropped."""

    alpha_matting: bool = False
    foreground_threshold: int = 240
    background_threshold: int = 10
    erode_size: int = 10
    only_mask: bool = False
    post_process_mask: bool = False
    decontaminate: bool = False
    bgcolor: tuple[int, int, int, int] | None = None
    crop: bool = False

    def remove_kwargs(self) -> dict:
        """The keywords `rembg.remove` takes for these options."""
        return {
            "alpha_matting": self.alpha_matting,
            "alpha_matting_foreground_threshold": self.foreground_threshold,
            "alpha_matting_background_threshold": self.background_threshold,
            "alpha_matting_erode_size": self.erode_size,
            "only_mask": self.only_mask,
            "post_process_mask": self.post_process_mask,
            "decontaminate": self.decontaminate,
            "bgcolor": tuple(self.bgcolor) if self.bgcolor is not None else None,
        }


DEFAULT_REMOVAL = Removal()


class _Given:
    """A stand-in session for `rembg.remove`: the mask is already computed."""

    def __init__(self, mask: Image.Image):
        self.mask = mask

    def predict(self, img, *args, **kwargs) -> list[Image.Image]:
        return [self.mask]


class _Captured(Exception):
    def __init__(self, feed: dict):
        super().__init__("input captured")
        self.feed = feed


class _Recorder:
    """Stands in for the ONNX session while rembg's `predict` prepares an image's input, and keeps it."""

    def __init__(self, inner):
        self.inner = inner

    def get_inputs(self):
        return self.inner.get_inputs()

    def get_outputs(self):
        return self.inner.get_outputs()

    def run(self, output_names, feed, *args, **kwargs):
        raise _Captured(feed)


class _Replay:
    """Stands in for the ONNX session while rembg's `predict` turns one image's outputs into its mask."""

    def __init__(self, inner, outputs: list):
        self.inner, self.outputs = inner, outputs

    def get_inputs(self):
        return self.inner.get_inputs()

    def get_outputs(self):
        return self.inner.get_outputs()

    def run(self, output_names, feed, *args, **kwargs):
        return self.outputs


def with_batch_axis(path: Path) -> bytes | None:
    """The graph at `path` with dim 0 of its inputs and outputs made dynamic, or None where that is not
    safe: a graph without the `onnx` package, one whose dim 0 is not a fixed 1, or one that reshapes to
    constant shapes (which would keep the 1 inside the graph)."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(path))
    if any(node.op_type == "Reshape" for node in model.graph.node):
        return None
    ends = [*model.graph.input, *model.graph.output]
    if any(not v.type.tensor_type.shape.dim or v.type.tensor_type.shape.dim[0].dim_value not in (0, 1) for v in ends):
        return None
    for value in ends:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]  # inferred shapes would still say 1
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        log.info("%s: no batch axis (%s)", path.name, exc)
        return None
    return model.SerializeToString()


def providers_for(device: str) -> list:
    """onnxruntime's providers for "cpu" or "cuda:N" (CUDA where this onnxruntime has it, else the CPU)."""
    import onnxruntime as ort

    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.partition(":")[2] or 0)
            return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        log.warning("this onnxruntime has no CUDA provider (install onnxruntime-gpu): background removal runs on the CPU")
    return ["CPUExecutionProvider"]


def session_options(settings):
    """onnxruntime options sized to this worker's share of the cores, as torch's threads are."""
    import onnxruntime as ort

    from models.runtime import worker_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = worker_threads(settings)
    options.inter_op_num_threads = 1
    # No CPU arena: with the batch axis dynamic, onnxruntime's arena reserves blocks for each batch size it
    # meets and never frees them: u2netp's worker grew from 1.2 to 2.5 GB in a soak (bench/README.md, "Soak").
    # Without it, plain malloc (models/runtime.py's settings) holds 0.95 GB, no slower than we could measure.
    options.enable_cpu_mem_arena = False
    return options


def subject_box(mask: Image.Image) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the mask's non-zero pixels, or None when it has none."""
    return mask.getbbox()


def upright_rgb(image: Image.Image) -> Image.Image:
    """The image as rembg's cutout needs it (RGB or RGBA), with no EXIF orientation left to apply."""
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        # already upright (our decoder turned it): rembg's exif_transpose would turn it again
        image = Image.frombytes(image.mode, image.size, image.tobytes())
    return image


class BackgroundRemover(ImageModel):
    """`forward(images, removals)` -> one image per input: the RGBA cutout, or the L mask with `only_mask`,
    as `rembg.remove` gives it, then cropped with `crop`."""

    kind = "segmenter"
    session_name: ClassVar[str]  # rembg's session (rembg.sessions.sessions), also the graph's name in weights
    reads = ("MODEL_DIR", "ALLOW_DOWNLOADS")
    batchable: ClassVar[bool] = False  # whether the graph may be given a dynamic batch axis (checked: U²-Net)
    batch_axis: bool = True  # use it when the graph may have it (False: image by image, for measurements)

    def __init__(self, settings):
        super().__init__(settings)
        self.session = None
        self.path: Path | None = None
        self.batched = False

    def weights_path(self) -> Path:
        return weights.rembg_file(self.settings, self.session_name)

    def load(self, device: str) -> None:
        try:
            import onnxruntime as ort
            from rembg.sessions import sessions
        except ImportError as exc:
            raise ModelUnavailable(f"rembg is not installed ({exc}): pip install 'rembg[cpu]==2.0.86'") from None
        path = self.weights_path()
        providers = providers_for(device)
        graph = with_batch_axis(path) if self.batchable and self.batch_axis else None
        try:
            inner = ort.InferenceSession(graph if graph is not None else str(path), session_options(self.settings),
                                         providers=providers)
        except Exception as exc:
            raise weights.describe_failure(exc, str(path)) from None
        # rembg's session class, holding our onnxruntime session: its predict (input size, normalisation,
        # the mask's post-processing) is rembg's own. rembg's __init__ would look for the file itself.
        session_class = sessions[self.session_name]
        session = session_class.__new__(session_class)
        session.model_name = self.session_name
        session.inner_session = inner
        self.session, self.path, self.batched = session, path, graph is not None
        self.device = device if providers[0] != "CPUExecutionProvider" else "cpu"

    def masks(self, images: list[Image.Image]) -> list[Image.Image]:
        """rembg's mask for each image (what its session's predict gives), batched when the graph allows."""
        if not self.batched or len(images) < 2:
            return [self.session.predict(image)[0] for image in images]
        feeds = []
        for image in images:  # rembg's predict prepares each input; the recorder keeps it instead of running
            stand_in = copy.copy(self.session)
            stand_in.inner_session = _Recorder(self.session.inner_session)
            try:
                stand_in.predict(image)
            except _Captured as captured:
                feeds.append(captured.feed)
        batch = {name: np.concatenate([feed[name] for feed in feeds]) for name in feeds[0]}
        outputs = self.session.inner_session.run(None, batch)
        masks = []
        for index, image in enumerate(images):  # and turns each image's outputs into its mask
            stand_in = copy.copy(self.session)
            stand_in.inner_session = _Replay(self.session.inner_session, [out[index:index + 1] for out in outputs])
            stand_in.normalize = lambda *args, **kwargs: {}
            masks.append(stand_in.predict(image)[0])
        return masks

    def forward(self, images: list[Image.Image], removals: list[Removal] | None = None, **params) -> list[Image.Image]:
        from rembg.bg import post_process, remove

        if not images:
            return []
        removals = list(removals) if removals is not None else [DEFAULT_REMOVAL] * len(images)
        if len(removals) != len(images):
            raise ValueError(f"{len(images)} images but {len(removals)} removals")
        images = [upright_rgb(image) for image in images]
        results = []
        for image, mask, removal in zip(images, self.masks(images), removals):
            if removal.post_process_mask:  # rembg's own step, done here so the crop sees the same mask
                mask = Image.fromarray(post_process(np.asarray(mask)))
            kwargs = removal.remove_kwargs() | {"post_process_mask": False}
            result = remove(image, session=_Given(mask), **kwargs)
            if removal.crop and (box := subject_box(mask)) is not None:
                result = result.crop(box)
            results.append(result)
        return results


class U2Net(BackgroundRemover):
    name = "u2net"
    session_name = "u2net"
    batchable = True
    description = "U²-Net background removal, general subjects (rembg u2net, 176 MB)"


class U2NetP(BackgroundRemover):
    name = "u2netp"
    session_name = "u2netp"
    batchable = True
    description = "U²-Net-p background removal, the small and fast one (rembg u2netp, 4.6 MB)"


class U2NetHumanSeg(BackgroundRemover):
    name = "u2net_human_seg"
    session_name = "u2net_human_seg"
    batchable = True
    description = "U²-Net background removal trained on people (rembg u2net_human_seg)"


class Silueta(BackgroundRemover):
    name = "silueta"
    session_name = "silueta"
    batchable = True
    description = "Silueta background removal, U²-Net reduced to 43 MB (rembg silueta)"


class IsNetGeneral(BackgroundRemover):
    name = "isnet-general-use"
    session_name = "isnet-general-use"
    description = "IS-Net background removal, general subjects, 1024 px input (rembg isnet-general-use)"


class BiRefNetGeneral(BackgroundRemover):
    name = "birefnet-general"
    session_name = "birefnet-general"
    description = "BiRefNet background removal, general subjects, 1024 px input (rembg birefnet-general)"


class BiRefNetGeneralLite(BackgroundRemover):
    name = "birefnet-general-lite"
    session_name = "birefnet-general-lite"
    description = "BiRefNet background removal, general subjects, Swin-tiny backbone (rembg birefnet-general-lite)"


class BiRefNetPortrait(BackgroundRemover):
    name = "birefnet-portrait"
    session_name = "birefnet-portrait"
    description = "BiRefNet background removal for portraits (rembg birefnet-portrait)"


class BiRefNetDIS(BackgroundRemover):
    name = "birefnet-dis"
    session_name = "birefnet-dis"
    description = "BiRefNet dichotomous image segmentation, fine detail (rembg birefnet-dis)"


class BiRefNetHRSOD(BackgroundRemover):
    name = "birefnet-hrsod"
    session_name = "birefnet-hrsod"
    description = "BiRefNet high-resolution salient object detection (rembg birefnet-hrsod)"


class BiRefNetCOD(BackgroundRemover):
    name = "birefnet-cod"
    session_name = "birefnet-cod"
    description = "BiRefNet camouflaged object detection (rembg birefnet-cod)"


class BiRefNetMassive(BackgroundRemover):
    name = "birefnet-massive"
    session_name = "birefnet-massive"
    description = "BiRefNet trained on the massive dataset, general subjects (rembg birefnet-massive)"


class CustomU2Net(BackgroundRemover):
    """Your own U²-Net-style graph (rembg's u2net_custom: 320 px input, ImageNet normalisation)."""

    name = "u2net_custom"
    session_name = "u2net_custom"
    description = "Your own U²-Net-style ONNX graph, from BACKGROUND_CUSTOM_MODEL (rembg u2net_custom)"
    reads = ("BACKGROUND_CUSTOM_MODEL", "MODEL_DIR")

    def weights_path(self) -> Path:
        return weights.rembg_custom_file(self.settings)
