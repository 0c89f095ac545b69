"""`sopi-train`: the command line over `models.training` (the library: TrainConfig / preset,
PatientData, the losses, Trainer; docs/training.md).

This module imports torch only once a run needs it, so `sopi-train --help` works on the base
install, and a missing PyTorch is one `error:` line (exit 2). The library's names are still
importable from here (`from models.train import Trainer`, as before the split); that import
loads torch.

`--minutes` bounds the whole call: loading the CT, rendering the training pool (at most
POOL_SHARE of the time left; a pool cut short is said, in the summary too), the first evaluation
and the training steps; only the final evaluation and checkpoint come after it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models._cli import (EXIT_CODES_HELP, EXIT_FAILED, EXIT_INPUT, EXIT_OK, SopiError, UsageError,
                         error, paragraphs, require)

if TYPE_CHECKING:  # pragma: no cover
    from models.training import *  # noqa: F401,F403
    from models.training import TrainConfig, Trainer

POOL_SHARE = 0.5  # the training pool may use this share of the time left after loading the CT


def __getattr__(name: str) -> Any:
    """The training library's names (`models.training`), importable from here as before."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from models import training

    try:
        return getattr(training, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sopi-train",
        description=paragraphs(
            "Train RTPI or the composite encoders on DRRs simulated from one CT "
            "(patient-specific), resumable, writing checkpoints sopi-export reads.",
            "Needs PyTorch: pip install -e '.[export]'."),
        epilog=paragraphs(
            EXIT_CODES_HELP.format(failed="the last training loss is not finite"),
            "example: sopi-train --phantom --network rtpi --config cpu --minutes 12 "
            "--run-dir runs/rtpi && sopi-export runs/rtpi/rtpi.pt -o bundle/"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ct", help="CT (NIfTI / DICOM folder / .npz, read by runtime.load_ct); "
                                  "this or --phantom is required")
    src.add_argument("--phantom", action="store_true",
                     help="use runtime.make_phantom() instead of a CT (this or --ct is required)")
    p.add_argument("--mask", help="label mask (NIfTI) of the CT; the encoders' moving DRR uses HU "
                                  "inside it (default: none, the whole CT)")
    p.add_argument("--network", choices=("rtpi", "encoders"), required=True,
                   help="what to train (required; with --resume it must match the run's)")
    p.add_argument("--config", choices=("cpu", "paper", "tiny"), default="cpu",
                   help="preset: cpu = 2 cores, patient-specific; paper = GPU; tiny = tests only "
                        "(default: cpu; with --resume the run's own config is used)")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="wall-time limit of the whole call: loading the CT, rendering the training "
                        f"pool (at most {POOL_SHARE * 100:.0f}%% of the time left; a pool cut short is "
                        "reported), evaluation and training; the final evaluation and checkpoint "
                        "come after it (default: 10)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="also stop after this many steps (default: no step limit)")
    p.add_argument("--run-dir", required=True,
                   help="run folder: state.pt, log.jsonl, eval.json, rtpi.pt / encoders.pt (required)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its state.pt. A folder without state.pt "
                        "is an error (exit 2): leave out --resume to start a fresh run there. "
                        "Without --resume an existing state.pt is an error too (default: off)")
    p.add_argument("--checkpoint-minutes", type=float, default=None,
                   help="write the state and the checkpoint every N minutes "
                        "(default: the preset's, 3 for cpu, 5 for paper)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's, 0)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads, 0 = torch's default (default: the preset's, 2 for cpu, "
                        "0 for paper)")
    p.add_argument("--device", default=None,
                   help="torch device of the networks and the torch renderers: cpu, cuda, cuda:N "
                        "(default: cpu; a resumed run keeps its own unless given)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field of the preset (Python literal), e.g. "
                        "pool_size=4096; repeatable (default: none)")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the held-out evaluations (default: evaluate before, at every "
                        "checkpoint and at the end)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress on stderr (default: progress on stderr; the summary JSON "
                        "always goes to stdout)")
    return p


def _overrides(a: argparse.Namespace, fields: set[str]) -> dict[str, Any]:
    """TrainConfig overrides from the options and --set (UsageError on an unknown key)."""
    over = {k: v for k, v in (("checkpoint_minutes", a.checkpoint_minutes), ("seed", a.seed),
                              ("threads", a.threads), ("device", a.device)) if v is not None}
    for item in a.set:
        key, _, val = item.partition("=")
        if key not in fields or not val:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        try:
            over[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            over[key] = val  # a bare word: a string field such as target_renderer
    return over


def _resumed_config(a: argparse.Namespace, training) -> TrainConfig:
    """The config saved in --run-dir's state (the run's own wins; threads and device may change)."""
    import torch

    state = Path(a.run_dir) / training.STATE
    if not state.is_file():
        raise UsageError(f"--resume: nothing to resume in {a.run_dir} (no {training.STATE}); "
                         "leave out --resume to start a fresh run there")
    try:
        cfg = training.TrainConfig.from_dict(torch.load(state, map_location="cpu",
                                                        weights_only=False)["config"])
    except (OSError, SopiError):
        raise
    except Exception as e:  # a truncated or foreign file
        raise UsageError(f"{state}: not a sopi-train state ({type(e).__name__}: {str(e)[:200]})") from None
    if cfg.network != a.network:
        raise UsageError(f"{a.run_dir} is a {cfg.network} run, not {a.network}")
    ignored = [o for o, v in (("--set", a.set), ("--seed", a.seed),
                              ("--checkpoint-minutes", a.checkpoint_minutes)) if v]
    if ignored:
        print(f"warning: {', '.join(ignored)} ignored with --resume (the run's own config is used)",
              file=sys.stderr)
    if a.threads is not None:
        cfg = dataclasses.replace(cfg, threads=a.threads)
    if a.device is not None:  # a run may move between machines
        cfg = dataclasses.replace(cfg, device=a.device)
    return cfg


def _config(a: argparse.Namespace, training) -> TrainConfig:
    if a.resume:
        return _resumed_config(a, training)
    fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
    try:
        return training.preset(a.network, a.config, **_overrides(a, fields))
    except TypeError as e:
        raise UsageError(str(e)) from None


def _reporter(quiet: bool, t0: float) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def _start(a: argparse.Namespace, training, deadline: float, say: Callable[[str], None]) -> Trainer:
    """Config, CT and Trainer (whose fresh pool gets POOL_SHARE of the time left)."""
    cfg = _config(a, training)
    data = training.load_patient(a.ct, a.mask, a.phantom, cfg)
    say(f"CT {data.source}: cube {cfg.volume_size}^3 of {data.geometry.voxel_mm:.3f} mm, "
        f"detector {cfg.det_size}^2 of {data.geometry.pixel_mm:.4f} mm, norm_factor "
        f"{data.geometry.norm_factor_mm:.2f} mm, mask {data.has_mask}")
    pool_s = max(0.0, POOL_SHARE * (deadline - time.perf_counter()))
    return training.Trainer(data, cfg, a.run_dir, resume=a.resume, log=say, pool_seconds=pool_s)


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    a = parser().parse_args(argv)
    if not require("sopi-train", "PyTorch", ("torch",)):
        return EXIT_INPUT
    from models import training

    deadline = t0 + a.minutes * 60
    say = _reporter(a.quiet, t0)
    try:
        tr = _start(a, training, deadline, say)
    except (SopiError, OSError, ValueError) as e:
        return error(e)
    res = tr.run(a.minutes, a.max_steps, evaluate=not a.no_eval, deadline=deadline)
    wall = time.perf_counter() - t0
    say(f"done: {res['steps']} steps (step {res['step']}) on a pool of {res['pool_size']} pairs "
        f"in {wall:.1f} s")
    print(json.dumps({"run_dir": str(tr.dir), "wall_s": round(wall, 1), **res}))
    if res["last_loss"] is not None and not math.isfinite(res["last_loss"]):
        error(f"training diverged: the last loss is {res['last_loss']}; the checkpoint in "
              f"{tr.dir} holds these weights")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
