"""Training checkpoints: written atomically every epoch, with everything a resumed run needs.

A checkpoint holds the model, optimizer, scheduler and scaler states, the RNG states, the epoch just finished, the
best validation metric so far and the history of epoch logs, plus the resolved config (nanoGPT's self-describing
checkpoints). ``last.pt`` is replaced every epoch; ``best.pt`` (weights only) whenever validation improves.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.data.io import atomic_path

LAST, BEST = "last.pt", "best.pt"


def atomic_save(obj: object, path: Path) -> Path:
    """torch.save into a temporary file beside ``path``, fsync, then rename over it (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, *, model: torch.nn.Module, optimizer, scheduler, scaler, epoch: int,
                        best: dict, history: list[dict], config: dict) -> Path:
    """Write ``path`` (usually ``last.pt``) atomically."""
    return atomic_save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(), "epoch": epoch,
        "best": best, "history": history, "config": config,
    }, path)


def load_training_state(path: Path) -> dict:
    """A checkpoint written by ``save_training_state`` (numpy RNG state needs the non-tensor allow-list)."""
    return torch.load(path, map_location="cpu", weights_only=False)  # our own file: it pickles RNG tuples


def restore_training_state(path: Path, model, optimizer, scheduler, config_hash: str,
                           log: Callable[[str], None]) -> dict | None:
    """Load ``last.pt`` into the model, optimizer, scheduler and RNGs; None when there is none yet.

    A checkpoint of another config (hash) is refused: a resumed run must continue the same recipe.
    """
    if not path.is_file():
        return None
    saved = load_training_state(path)
    if saved["config"].get("config_hash") != config_hash:
        raise ValueError(f"{path} belongs to a different config (hash {saved['config'].get('config_hash')} vs "
                         f"{config_hash}); use another out_dir or delete it")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    log(f"resuming after epoch {saved['epoch']} from {path}")
    return saved


def write_epoch_log(history: list[dict], path: Path) -> None:
    """``log.jsonl`` (one line per finished epoch) rewritten from the checkpoint's history, atomically. Called after
    ``last.pt`` is written, so a killed run never logs an epoch it will redo."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(h) + "\n" for h in history))


def is_done(out_dir: str | Path, summary: str, config_hash: str) -> bool:
    """True when ``out_dir`` holds the summary (done marker) of a finished run with exactly this config hash."""
    path = Path(out_dir) / summary
    return path.is_file() and json.loads(path.read_text()).get("config_hash") == config_hash


def report_if_done(out_dir: str | Path, summary: str, config_hash: str, run_id: str, log) -> bool:
    """``is_done``, saying so in the log: a stage whose run is finished returns at once."""
    if not is_done(out_dir, summary, config_hash):
        return False
    log(f"{run_id}: already finished ({Path(out_dir) / summary}); nothing to do")
    return True


def configure_determinism(deterministic: bool) -> None:
    """Deterministic kernels when asked (tests, resume checks); otherwise cuDNN autotuning and TF32 on GPUs."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        if torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
