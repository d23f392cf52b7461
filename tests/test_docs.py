"""The docs agree with the code: the configuration page is what its generator writes, every route and
every client command is in docs/api.md, links resolve, and docs/architecture.md's example embedder is
a working one. No server process: the app is built in this process and never run."""

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HEAVY = ("torch", "torchvision", "open_clip", "transformers")


def test_configuration_doc_is_what_the_generator_writes():
    code = ("import runpy, sys; runpy.run_path('tools/configuration_doc.py', run_name='__main__'); "
            f"sys.stderr.write('loaded: ' + repr(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().endswith("loaded: []"), f"the generator imported a model library: {result.stderr}"
    written = (DOCS / "configuration.md").read_text()
    assert written == result.stdout, (
        "docs/configuration.md differs from what tools/configuration_doc.py writes from settings.py and the "
        "model catalogue: run `make docs` (or `.venv/bin/python tools/configuration_doc.py > docs/configuration.md`) "
        "and commit the result")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("page", ["README.md", "docs/api.md", "docs/configuration.md", "docs/architecture.md"])
def test_relative_links_resolve(page):
    source = ROOT / page
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s) and mailto: not checked here
        file, _, anchor = target.partition("#")
        path = (source.parent / file).resolve() if file else source
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading with that anchor in {path.relative_to(ROOT)}")
    assert not broken, f"{page}: " + "; ".join(broken)


def test_every_route_and_alias_is_in_the_api_doc(tmp_path):
    import server
    from apis.analyze_routes import ALIASES
    from settings import Settings

    app_server = server.build_server(Settings(data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"),
                                              accelerator="cpu"))
    try:
        paths = {route.path for route in app_server.app.router.routes} | set(ALIASES)
    finally:
        app_server.app.state.handoff.close()
    api = (DOCS / "api.md").read_text()
    internal = {"/docs/oauth2-redirect"}  # FastAPI's helper for /docs, not a route anyone calls
    missing = sorted(p for p in paths - internal if f"`{p}`" not in api and f"`{p}/*`" not in api)
    assert not missing, f"routes the server answers but docs/api.md does not show: {missing}"


def test_every_client_command_has_an_example_in_the_api_doc():
    import client

    api = (DOCS / "api.md").read_text()
    missing = [c for c in client.COMMANDS if f"### `{c}`" not in api or f"client.py {c} " not in api]
    assert not missing, f"client.py commands without a section and an example in docs/api.md: {missing}"


def test_the_readme_points_at_every_page_of_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert [p.name for p in sorted(DOCS.glob("*.md")) if f"(docs/{p.name})" not in readme] == []


# ---------------------------------------------------------------- docs/architecture.md's worked example

def _architecture_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / "architecture.md").read_text(), flags=re.DOTALL)


def test_the_catalogue_shown_is_the_catalogue():
    from models import catalogue

    shown = next(block for block in _architecture_blocks() if block.startswith("CATALOGUE = "))
    namespace = {}
    exec(shown, namespace)
    assert namespace["CATALOGUE"] == catalogue.CATALOGUE, "docs/architecture.md shows another CATALOGUE than models/catalogue.py"


@pytest.fixture
def example_embedder(monkeypatch):
    """docs/architecture.md's embedder as module models.resnet, and its line added to the catalogue."""
    from models import catalogue

    code = next(block for block in _architecture_blocks() if "class ResNetEmbedder" in block)
    module = types.ModuleType("models.resnet")
    exec(compile(code, "docs/architecture.md", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "models.resnet", module)
    monkeypatch.setattr(catalogue, "CATALOGUE", catalogue.CATALOGUE + ("models.resnet:ResNetEmbedder",))
    catalogue.model_classes.cache_clear()
    yield module
    catalogue.model_classes.cache_clear()


def test_the_example_embedder_reaches_every_list_the_doc_names(example_embedder):
    from analysis import operations
    from models import catalogue
    from settings import load_settings

    assert "resnet18" in catalogue.names("embedder")
    assert catalogue.embedders()["embed_resnet18"] == "resnet18"
    assert operations._operations()["embed_resnet18"].description == "ResNet-18 ImageNet features, 512-d (torchvision)"
    assert load_settings({"SEARCH_MODELS": "mobilenet_v2,resnet18"}).search_models == ("mobilenet_v2", "resnet18")
    assert "resnet18" in catalogue.names()  # what make weights fetches


@pytest.mark.slow  # builds a ResNet-18 in torch: seconds of CPU
def test_the_example_embedder_loads_and_embeds_a_batch(example_embedder, monkeypatch):
    from PIL import Image
    from torchvision.models import resnet18

    from models import catalogue
    from settings import load_settings

    # random weights in the state-dict form weights.torchvision_state_dict returns (the real file needs the network)
    monkeypatch.setattr(example_embedder.weights, "torchvision_state_dict",
                        lambda settings, filename, url: resnet18(weights=None).state_dict())
    loaded, unavailable = catalogue.load_models(["resnet18"], load_settings({"ALLOW_DOWNLOADS": "false"}), "cpu")
    assert unavailable == {}
    vectors = loaded["resnet18"].forward([Image.new("RGB", (640, 480), (200, 30, 30)), Image.new("L", (90, 300))])
    assert [(v.shape, str(v.dtype)) for v in vectors] == [((512,), "float32")] * 2
