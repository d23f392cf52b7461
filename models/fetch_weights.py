"""`make weights`: load every model once with downloads on, so MODEL_DIR holds all weights for an
offline deployment (then run with ALLOW_DOWNLOADS=false). Prints one line per model; exit 1 if any failed."""

import dataclasses
import sys

from models.catalogue import load_models, names
from settings import load_settings


def main() -> int:
    settings = dataclasses.replace(load_settings(), allow_downloads=True)
    print(f"fetching weights into {settings.model_dir}")
    _, unavailable = load_models(names(), settings, "cpu")
    for name in names():
        print(f"  {name:16s} {'ok' if name not in unavailable else 'FAILED: ' + unavailable[name]}")
    return 1 if unavailable else 0


if __name__ == "__main__":
    sys.exit(main())
