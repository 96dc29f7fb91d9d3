"""Subcommands of the engine: pretrain, finetune, predict, convert-remedis, and run (whole studies)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.data.io import check_output


def cmd_finetune(args: argparse.Namespace) -> None:
    from engine.config import load_config
    from engine.recipes import FinetuneConfig
    from engine.train.finetune import finetune

    finetune(load_config(FinetuneConfig, args.config, args.set))

def cmd_predict(args: argparse.Namespace) -> None:
    from engine.config import load_config
    from engine.recipes import FinetuneConfig
    from engine.train.predict import predict

    folder = predict(load_config(FinetuneConfig, args.config, args.set), force=args.force)
    if folder is not None:
        print(f"wrote {folder}")

def cmd_pretrain(args: argparse.Namespace) -> None:
    from engine.config import load_config
    from engine.pretrain_config import PretrainConfig
    from engine.train.pretrain import pretrain

    pretrain(load_config(PretrainConfig, args.config, args.set))

def cmd_run(args: argparse.Namespace) -> None:
    from engine.study.command import run_study

    status = run_study(args.config, overrides=args.set, dry_run=args.dry_run, force=args.force, only=args.only,
                       launcher=args.launcher, slurm_cluster=args.slurm_cluster, parallel=args.parallel)
    if status:
        raise SystemExit(status)

def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="a whole study from one config: prepare -> cache -> pretrain -> finetune -> "
                                   "predict -> report (idempotent, resumable)")
    p.add_argument("config", type=Path, help="study YAML, e.g. configs/demo.yaml or configs/paper.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--dry-run", action="store_true", help="print the plan with images and GPU-hour estimates")
    p.add_argument("--force", action="store_true", help="rerun the selected jobs even when up to date")
    p.add_argument("--only", metavar="PATTERN", help="comma-separated globs of job names, e.g. 'finetune-mae-*'")
    p.add_argument("--launcher", choices=["local", "torchrun", "slurm"], default="local")
    p.add_argument("--parallel", type=int, metavar="N", help="local: run up to N independent jobs at a time "
                                                             "(each in its own process; default: the config's)")
    p.add_argument("--slurm-cluster", default=None, help=argparse.SUPPRESS)  # 'local' in tests (submitit)
    p.set_defaults(func=cmd_run)

def cmd_convert_remedis(args: argparse.Namespace) -> None:
    from engine.models.remedis import convert_remedis_dir

    summary = convert_remedis_dir(args.saved_model, check_output(args.out, force=args.force))
    print(f"wrote {args.out}: {summary}")

def add_engine_stages(sub: argparse._SubParsersAction) -> None:
    for name, func, text in (("pretrain", cmd_pretrain, "MAE or MoCo v3 pre-training on a pool (YAML config)"),
                             ("finetune", cmd_finetune, "fine-tune or linear-probe one model (YAML config)"),
                             ("predict", cmd_predict, "score validate/test with the selected checkpoint")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", type=Path, help="YAML config (engine/pretrain_config.py or engine/recipes.py)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.blr=5e-4 (repeatable; type-checked)")
        if name == "predict":
            p.add_argument("--force", action="store_true", help="replace the run if the store has it")
        p.set_defaults(func=func)
    r = sub.add_parser("convert-remedis", help="REMEDIS TF SavedModel folder -> BiT .npz (needs tensorflow once)")
    r.add_argument("saved_model", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--force", action="store_true")
    r.set_defaults(func=cmd_convert_remedis)
