"""``python -m engine.train.pretrain_main CONFIG [KEY=VALUE ...]``: the pretrain stage on one process or under
``torchrun`` (``python -m torch.distributed.run --nproc_per_node N -m engine.train.pretrain_main CONFIG``)."""

from __future__ import annotations

import argparse
import sys

from engine.config import ConfigError, load_config
from engine.data.errors import DataError
from engine.pretrain_config import PretrainConfig
from engine.train.loop import NonFiniteLossError
from engine.train.pretrain import pretrain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pretrain_main", description=__doc__)
    parser.add_argument("config", help="pre-training YAML (engine/pretrain_config.py PretrainConfig)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=200")
    args = parser.parse_args(argv)
    try:
        config = load_config(PretrainConfig, args.config, args.overrides)
        pretrain(config)
    except (ConfigError, DataError, ValueError) as exc:
        print(f"pretrain: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"pretrain: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
