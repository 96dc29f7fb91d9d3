"""The command line's subcommands, one module per layer; run_experiments.py assembles them (argparse lives here
and in run_experiments.py only; the work happens in engine/)."""
