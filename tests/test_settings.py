"""settings.py: defaults, every variable's parser, and errors that name the variable."""

import ipaddress
import os

import pytest

from images.fetch import FetchPolicy
from images.decode import DecodeLimits
from settings import DEFAULT_IMAGE_FORMATS, VARIABLES, Settings, SettingsError, load_settings


def test_defaults():
    settings = load_settings({})
    assert settings == Settings()
    assert settings.port == 8010 and settings.host == "0.0.0.0"
    assert settings.log_level == "INFO"
    assert settings.workers_per_device == 1 and settings.num_api_servers == 1
    assert settings.accelerator == "auto"
    assert settings.api_key is None
    assert settings.cache_dir == os.path.join(os.path.expanduser("~"), ".cache", "imageserver")
    assert settings.averaging_method == "arithmetic"
    assert settings.thumbnail_size == 512
    assert settings.stats_max_batch_size == 1
    assert settings.max_upload_bytes == 25 * 1024**2
    assert settings.max_image_pixels == 64_000_000
    assert settings.image_formats == DEFAULT_IMAGE_FORMATS == ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")
    assert settings.decode_limits == DecodeLimits()  # the decoder's defaults and the settings' agree
    assert settings.fetch_allow_networks == ()
    assert settings.fetch_policy == FetchPolicy()  # the fetcher's defaults and the settings' agree
    assert "search" in settings.capabilities
    assert settings.store_backend == "sqlite"
    assert settings.data_dir == os.path.join(os.path.expanduser("~"), ".local", "share", "imageserver")
    assert settings.elasticsearch_url is None and settings.elasticsearch_index == "images"
    assert settings.elasticsearch_refresh == "wait_for" and settings.elasticsearch_timeout == 10.0
    assert settings.search_models == ("mobilenet_v2",)


def test_blank_values_mean_the_default():
    blank = {name: "  " for name in VARIABLES if name != "API_KEY"}
    assert load_settings(blank) == Settings()
    assert load_settings({"API_KEY": ""}).api_key is None


def test_reads_os_environ_by_default(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PORT", "9123")
    assert load_settings().port == 9123


# variable -> (good raw value, the parsed value)
GOOD = {
    "PORT": ("65535", 65535),
    "HOST": (" 127.0.0.1 ", "127.0.0.1"),
    "LOG_LEVEL": ("debug", "DEBUG"),
    "LOG_FORMAT": (" JSON ", "json"),
    "METRICS": ("no", False),
    "NUM_API_SERVERS": ("2", 2),
    "WORKERS_PER_DEVICE": ("64", 64),
    "TORCH_THREADS": ("4", 4),
    "ACCELERATOR": (" CPU ", "cpu"),
    "REQUEST_TIMEOUT": ("2.5", 2.5),
    "API_KEY": ("s3cret key", "s3cret key"),
    "SECRET_KEY": ("  a secret of enough length ", "a secret of enough length"),
    "PUBLIC_ROUTES": (" /health, /info,/static/* ", ("/health", "/info", "/static/*")),
    "CACHE_DIR": ("~/somewhere", os.path.join(os.path.expanduser("~"), "somewhere")),
    "AVERAGING_METHOD": ("Harmonic", "harmonic"),
    "THUMBNAIL_SIZE": ("16", 16),
    "STATS_MAX_BATCH_SIZE": ("256", 256),
    "STATS_BATCH_TIMEOUT": ("0.001", 0.001),
    "MAX_UPLOAD_BYTES": ("25MB", 25_000_000),
    "MAX_IMAGE_PIXELS": ("1", 1),
    "MAX_JSON_DEPTH": ("8", 8),
    "MAX_TASKS": ("1024", 1024),
    "IMAGE_FORMATS": ("jpeg, png", ("JPEG", "PNG")),
    "MAX_IMAGE_ASPECT": ("2.5", 2.5),
    "MAX_IMAGE_FRAMES": ("1", 1),
    "MAX_JPEG_SCANS": ("10", 10),
    "MAX_JPEG_SCAN_PIXELS": ("1000000", 1_000_000),
    "FETCH_TIMEOUT": ("0.1", 0.1),
    "FETCH_MAX_BYTES": ("24MiB", 24 * 1024**2),
    "FETCH_MAX_REDIRECTS": ("0", 0),
    "CAPABILITIES": ("stats, Embed", ("stats", "embed")),
    "MODEL_DIR": ("~/weights", os.path.join(os.path.expanduser("~"), "weights")),
    "ALLOW_DOWNLOADS": ("off", False),
    "CLIP_MODEL": ("ViT-B-16", "ViT-B-16"),
    "CLIP_PRETRAINED": ("laion2b_s34b_b79k", "laion2b_s34b_b79k"),
    "DINO_MODEL": ("/models/dinov2-small", "/models/dinov2-small"),
    "CAPTION_MODEL": ("Salesforce/blip-image-captioning-large", "Salesforce/blip-image-captioning-large"),
    "PERSON_WEIGHTS": ("/weights/frcnn.pth", "/weights/frcnn.pth"),
    "PERSON_MIN_SIZE": ("320", 320),
    "CLASSIFIER_DIR": ("~/classifiers", os.path.join(os.path.expanduser("~"), "classifiers")),
    "BACKGROUND_CUSTOM_MODEL": ("~/my-u2net.onnx", os.path.join(os.path.expanduser("~"), "my-u2net.onnx")),
    "ANALYZE_MAX_BATCH_SIZE": ("32", 32),
    "ANALYZE_BATCH_TIMEOUT": ("0.05", 0.05),
    "EMBED_MAX_BATCH_SIZE": ("32", 32),
    "EMBED_BATCH_TIMEOUT": ("0", 0.0),
    "FETCH_ALLOW_NETWORKS": (
        "127.0.0.1/32, 10.0.0.0/8 ::1", tuple(map(ipaddress.ip_network, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"])),
    ),
    "STORE_BACKEND": (" Elasticsearch ", "elasticsearch"),
    "DATA_DIR": ("~/index", os.path.join(os.path.expanduser("~"), "index")),
    "ELASTICSEARCH_URL": (" https://user:pw@es.example:9200 ", "https://user:pw@es.example:9200"),
    "ELASTICSEARCH_INDEX": ("photos-2026.11", "photos-2026.11"),
    "ELASTICSEARCH_TIMEOUT": ("2.5", 2.5),
    "ELASTICSEARCH_REFRESH": ("False", "false"),
    "SEARCH_MODELS": ("mobilenet_v2, clip_vit_b_32", ("mobilenet_v2", "clip_vit_b_32")),
    "SEARCH_MAX_BATCH_SIZE": ("16", 16),
    "SEARCH_BATCH_TIMEOUT": ("0", 0.0),
    "STATS_MAX_QUEUE": ("1000", 1000),
    "ANALYZE_MAX_QUEUE": ("4", 4),
    "EMBED_MAX_QUEUE": ("1", 1),
    "SEARCH_MAX_QUEUE": ("100000", 100000),
    "BACKGROUND_MODEL": (" U2NETP ", "u2netp"),
    "BACKGROUND_MODELS": ("u2netp", ("u2netp",)),
    "BACKGROUND_MAX_BATCH_SIZE": ("16", 16),
    "BACKGROUND_BATCH_TIMEOUT": ("0", 0.0),
    "BACKGROUND_MAX_QUEUE": ("8", 8),
    "USER_LIMIT": ("2", 2),
}


def test_every_variable_has_a_good_value_here():
    assert set(GOOD) == set(VARIABLES)


@pytest.mark.parametrize("name", list(GOOD))
def test_every_variable_parses_a_good_value(name):
    raw, expected = GOOD[name]
    field = VARIABLES[name][0]
    settings = load_settings({name: raw})
    assert getattr(settings, field) == expected
    assert getattr(settings, field) != getattr(Settings(), field)  # the value really changed something
    others = {f: getattr(Settings(), f) for f, *_ in VARIABLES.values() if f != field}
    assert all(getattr(settings, f) == value for f, value in others.items())


BAD = {
    "PORT": ["0", "65536", "70000", "http", "80.5", "-1"],
    "SECRET_KEY": ["short", "  fifteen chars  "],
    "LOG_LEVEL": ["verbose", "warn"],
    "LOG_FORMAT": ["logfmt", "yaml"],
    "METRICS": ["prometheus", "2"],
    "NUM_API_SERVERS": ["0", "65", "two"],
    "WORKERS_PER_DEVICE": ["zero", "0", "65", "1.5"],
    "TORCH_THREADS": ["-1", "257", "auto"],
    "ACCELERATOR": ["gpu", "tpu"],
    "REQUEST_TIMEOUT": ["0", "0.05", "-1", "nan", "soon"],
    "AVERAGING_METHOD": ["median", "mean"],
    "THUMBNAIL_SIZE": ["15", "8193", "big"],
    "STATS_MAX_BATCH_SIZE": ["0", "257", "four"],
    "STATS_BATCH_TIMEOUT": ["-0.1", "nan", "fast"],
    "MAX_UPLOAD_BYTES": ["0", "lots", "-5MB", "25XB", "25 M B", "0.1"],
    "MAX_IMAGE_PIXELS": ["0", "-1", "1e6", "many"],
    "MAX_JSON_DEPTH": ["1", "513", "deep"],
    "MAX_TASKS": ["0", "1025", "all"],
    "PUBLIC_ROUTES": ["health", "/a b", "/static/*/x", ","],
    "IMAGE_FORMATS": ["JPEG,SVG", ",", "heic", "psd"],
    "MAX_IMAGE_ASPECT": ["0.5", "nan", "inf", "wide"],
    "MAX_IMAGE_FRAMES": ["0", "-1", "many"],
    "MAX_JPEG_SCANS": ["0", "ten"],
    "MAX_JPEG_SCAN_PIXELS": ["0", "4e8"],
    "FETCH_TIMEOUT": ["0", "nan", "-3", "ten"],
    "FETCH_MAX_BYTES": ["0", "huge", "1TB"],
    "FETCH_MAX_REDIRECTS": ["-1", "21", "many"],
    "CAPABILITIES": ["stats,match", ",", "all"],
    "ALLOW_DOWNLOADS": ["maybe", "2"],
    "PERSON_MIN_SIZE": ["63", "2049", "big"],
    "ANALYZE_MAX_BATCH_SIZE": ["0", "257", "eight"],
    "ANALYZE_BATCH_TIMEOUT": ["-1", "nan"],
    "EMBED_MAX_BATCH_SIZE": ["0", "257"],
    "EMBED_BATCH_TIMEOUT": ["-0.5", "later"],
    "FETCH_ALLOW_NETWORKS": ["10.0.0.0/33", "localhost", "300.1.1.1", "10.0.0.1/8"],
    "STORE_BACKEND": ["postgres", "es"],
    "ELASTICSEARCH_URL": ["localhost:9200", "ftp://es.example", "http://es.example:port", "http://"],
    "ELASTICSEARCH_INDEX": ["Images", "_images", "my images", "a/b", "..", "x" * 256],
    "ELASTICSEARCH_TIMEOUT": ["0", "-1", "nan", "slow"],
    "ELASTICSEARCH_REFRESH": ["wait", "sometimes"],
    "SEARCH_MODELS": ["resnet50", "mobilenet_v2,resnet50", ","],
    "SEARCH_MAX_BATCH_SIZE": ["0", "257", "many"],
    "SEARCH_BATCH_TIMEOUT": ["-1", "nan"],
    "STATS_MAX_QUEUE": ["0", "100001", "many"],
    "ANALYZE_MAX_QUEUE": ["-1"],
    "EMBED_MAX_QUEUE": ["1.5"],
    "SEARCH_MAX_QUEUE": ["unbounded"],
    "BACKGROUND_MODEL": ["bria-rmbg", "u2net,u2netp", "mobilenet_v2"],
    "BACKGROUND_MODELS": ["u2net,vitmatte", ",", "mobilenet_v2"],
    "BACKGROUND_MAX_BATCH_SIZE": ["0", "257"],
    "BACKGROUND_BATCH_TIMEOUT": ["-1", "soon"],
    "BACKGROUND_MAX_QUEUE": ["0"],
    "USER_LIMIT": ["0", "-1", "many"],
}
CASES = [(name, raw) for name, raws in BAD.items() for raw in raws]


def test_every_checked_variable_has_bad_values_here():
    free_text = {"HOST", "API_KEY", "CACHE_DIR", "MODEL_DIR", "CLIP_MODEL", "CLIP_PRETRAINED", "DINO_MODEL",
                 "CAPTION_MODEL", "CLASSIFIER_DIR", "PERSON_WEIGHTS", "DATA_DIR",
                 "BACKGROUND_CUSTOM_MODEL"}  # any string is accepted
    assert set(BAD) == set(VARIABLES) - free_text


@pytest.mark.parametrize("name, raw", CASES, ids=[f"{n}={r}" for n, r in CASES])
def test_bad_value_raises_an_error_naming_the_variable(name, raw):
    with pytest.raises(SettingsError) as caught:
        load_settings({name: raw})
    message = str(caught.value)
    assert message.startswith(f"{name}={raw!r}: "), message
    assert "\n" not in message


def test_the_first_bad_variable_is_named_even_with_good_ones_around():
    with pytest.raises(SettingsError, match=r"^THUMBNAIL_SIZE="):
        load_settings({"PORT": "8080", "THUMBNAIL_SIZE": "1", "LOG_LEVEL": "debug"})


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1000", 1000),
        ("1", 1),
        ("25MB", 25_000_000),
        ("25mb", 25_000_000),
        ("25M", 25_000_000),
        (" 25 MB ", 25_000_000),
        ("24MiB", 24 * 1024**2),
        ("24mi", 24 * 1024**2),
        ("1.5k", 1500),
        ("1.5KiB", 1536),
        ("2G", 2_000_000_000),
        ("1GiB", 1024**3),
        ("512b", 512),
        ("512B", 512),
    ],
)
def test_byte_sizes(raw, expected):
    assert load_settings({"MAX_UPLOAD_BYTES": raw}).max_upload_bytes == expected
    assert load_settings({"FETCH_MAX_BYTES": raw}).fetch_max_bytes == expected


def test_fetch_policy_follows_the_fetch_variables():
    settings = load_settings({"FETCH_TIMEOUT": "3", "FETCH_MAX_BYTES": "1MB", "FETCH_MAX_REDIRECTS": "2",
                              "FETCH_ALLOW_NETWORKS": "192.168.0.0/16"})
    assert settings.fetch_policy == FetchPolicy(
        timeout=3.0, max_bytes=1_000_000, max_redirects=2, allow_networks=(ipaddress.ip_network("192.168.0.0/16"),)
    )


def test_icons_are_opt_in_formats_and_reach_the_decoder():
    settings = load_settings({"IMAGE_FORMATS": "jpeg, ico, ICNS", "MAX_IMAGE_FRAMES": "8"})
    assert settings.image_formats == ("JPEG", "ICO", "ICNS")
    assert settings.decode_limits.formats == ("JPEG", "ICO", "ICNS") and settings.decode_limits.max_frames == 8


def test_search_models_none_means_signatures_only():
    assert load_settings({"SEARCH_MODELS": "None"}).search_models == ()


def test_public_routes_none_means_every_route_needs_the_key():
    assert load_settings({"PUBLIC_ROUTES": "none"}).public_routes == ()


def test_elasticsearch_backend_without_its_url_is_a_start_up_error(tmp_path):
    from store.open import check_store_settings

    with pytest.raises(SettingsError, match=r"^STORE_BACKEND='elasticsearch': set ELASTICSEARCH_URL"):
        check_store_settings(load_settings({"STORE_BACKEND": "elasticsearch", "DATA_DIR": str(tmp_path)}))
    check_store_settings(load_settings({"STORE_BACKEND": "elasticsearch", "DATA_DIR": str(tmp_path),
                                        "ELASTICSEARCH_URL": "http://127.0.0.1:9"}))  # no connection is tried


def test_data_dir_that_cannot_be_written_is_a_start_up_error(tmp_path):
    from store.open import check_store_settings

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(SettingsError, match=r"^DATA_DIR=.*not a writable directory"):
        check_store_settings(load_settings({"DATA_DIR": str(blocker / "data")}))


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().port = 1


def test_the_configuration_page_documents_every_variable():
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert [name for name in VARIABLES if f"`{name}`" not in page] == []
