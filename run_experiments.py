#!/usr/bin/env python
"""fmfair command line: one subcommand per pipeline stage (argparse only; the work happens in engine/).

  synth     write synthetic data in the real CheXpert / NIH ChestX-ray14 formats
  prepare   build a cohort (CheXpert) or a pre-training pool table (NIH, MIMIC-CXR, unions)
  subsets   per-pathology resampled test sets, Glocker's resampled test set, balanced training sets
  cache     decode and resize images once into a uint8 cache
  import    import another tool's predictions into a results store
  report    subgroup AUCs, fairness gaps and scores, thresholds, the paper's tables (CSV / LaTeX / Markdown)
  finetune  fine-tune or linear-probe one registry model from a YAML config (one process or under torchrun)
  predict   score the validation and test splits with the selected checkpoint into a results store
  pretrain  MAE or MoCo v3 self-supervised pre-training on a pool (one process or under torchrun)
  convert-remedis  REMEDIS TensorFlow SavedModel -> BiT .npz the engine loads
  run       a whole study from one config (configs/demo.yaml, configs/paper.yaml): plan, dry run, resume

Engine stages import torch lazily; this file and engine.data import without it.
"""

from __future__ import annotations

import argparse
import sys

from cli.data_commands import add_cache, add_prepare, add_subsets, add_synth
from cli.engine_commands import add_engine_stages, add_run
from cli.metrics_commands import add_import, add_report
from engine.config import ConfigError
from engine.data.errors import DataError, OutputExistsError
from engine.models.registry import RegistryError
from engine.models.weights_error import WeightsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_experiments.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_synth, add_prepare, add_subsets, add_cache, add_import, add_report, add_engine_stages, add_run):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, OutputExistsError, FileExistsError, ConfigError, RegistryError,
            WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
