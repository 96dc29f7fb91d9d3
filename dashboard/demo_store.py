"""Write the synthetic demo results store unless it exists: ``python -m dashboard.demo_store [--out demo/store]
[--images 38240] [--seed 0]``, then ``python -m streamlit run dashboard/app.py``.

The store (engine.metrics.synth_predictions) holds the paper's model matrix with planted effects, not results;
the dashboard labels it SYNTHETIC DEMO DATA.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.metrics.synth_predictions import STORE_MARKER, write_synthetic_store

DEFAULT_OUT = Path("demo/store")
DEFAULT_IMAGES = 38_240  # the paper's test split


def ensure_demo_store(out: Path = DEFAULT_OUT, *, images: int = DEFAULT_IMAGES, seed: int = 0) -> tuple[Path, bool]:
    """The demo store at ``out``, written when absent; returns (path, written now). A non-empty folder that is not a
    synthetic store is left alone (ValueError)."""
    out = Path(out)
    if (out / STORE_MARKER).is_file():
        return out, False
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a synthetic store (no {STORE_MARKER}); choose another --out")
    write_synthetic_store(out, n_images=images, seed=seed)
    return out, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.demo_store", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"store folder (default {DEFAULT_OUT})")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"test images (default {DEFAULT_IMAGES}; validation images are added in proportion)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out, written = ensure_demo_store(args.out, images=args.images, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if written:
        print(f"wrote the synthetic demo store {out} in {time.perf_counter() - start:.1f} s")
    else:
        print(f"the demo store {out} exists (delete it to rebuild)")
    hint = "" if out == DEFAULT_OUT else f"FMFAIR_STORE={out} "
    print(f"open it: {hint}python -m streamlit run dashboard/app.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
