#!/usr/bin/env bash
# Wheels the GPU machine's image lacks (it has torch, timm of its own, pandas, pyarrow, sklearn, pyyaml, pillow;
# not polars or openpyxl), fetched here into .whl (git-ignored) for `run(carry=[".whl"])`. About 58 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  polars==2.1.0 polars-runtime-32==2.1.0 timm==1.0.31 openpyxl==3.1.5 et-xmlfile==2.0.0
