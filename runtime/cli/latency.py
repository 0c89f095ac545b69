"""`sopi-latency`: where every millisecond of a registration goes (`runtime.latency`).

Exit codes: 0 ok, 1 the measurement failed, 2 usage or input error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from runtime.cli.args import positive_float
from runtime.errors import SopiError
from runtime.latency.measure import LatencyConfig, run_latency

__all__ = ["build_parser", "main"]


def _parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes must be integers separated by commas, got {text!r}") from None
    if not sizes or any(n < 16 or n > 4096 for n in sizes):
        raise argparse.ArgumentTypeError(f"--sizes must be in 16..4096, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sopi-latency",
        description="Where every millisecond of a registration goes: cold start, per-stage and "
                    "per-iteration latency percentiles, fps, deadline misses, memory.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ct", help="CT to load (DICOM series folder, .nii/.nii.gz, .npz)")
    src.add_argument("--phantom", action="store_true", help="the procedural lumbar phantom (default)")
    p.add_argument("--mask", help="label file for --ct (spine mask)")
    frm = p.add_mutually_exclusive_group()
    frm.add_argument("--frames", metavar="DIR", help="folder of DICOM fluoroscopy files (init from positioner angles)")
    frm.add_argument("--synthetic", type=int, metavar="N", default=20,
                     help="N frames synthesised at random poses near a PA reference (default 20, cycled)")
    p.add_argument("--bundle", help="bundle folder (manifest.json + networks)")
    p.add_argument("--backend", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--budget-ms", type=positive_float, default=500.0,
                   help="deadline per frame in ms, > 0, or 'none' to run to convergence (default 500)")
    p.add_argument("--sizes", type=_parse_sizes, default=(128, 256),
                   help="square detector sizes for synthetic frames (default 128,256)")
    p.add_argument("--warm-frames", type=int, default=200, help="timed warm frames per size (default 200)")
    p.add_argument("--warmup", type=int, default=5, help="discarded registrations first (default 5)")
    p.add_argument("--no-cold-start", action="store_true", help="skip the fresh-process cold starts")
    p.add_argument("--overhead-frames", type=int, default=20,
                   help="frames with profile=False to measure the profiling cost (default 20; 0 = skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="write the report as JSON")
    p.add_argument("--plot", metavar="OUT", help="draw CDF/histogram plot (needs matplotlib, extra 'plot')")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.warm_frames < 1 or args.warmup < 0 or args.overhead_frames < 0:
        print("sopi-latency: --warm-frames must be >= 1, --warmup and --overhead-frames >= 0", file=sys.stderr)
        return 2
    if args.frames is None and args.synthetic < 1:
        print("sopi-latency: --synthetic must be >= 1", file=sys.stderr)
        return 2
    cfg = LatencyConfig(ct=args.ct, mask=args.mask, frames_dir=args.frames, synthetic=args.synthetic,
                        bundle=args.bundle, backend=args.backend,
                        budget_ms=args.budget_ms,
                        sizes=args.sizes, frames=args.warm_frames, warmup=args.warmup,
                        cold_start=not args.no_cold_start, overhead_frames=args.overhead_frames, seed=args.seed)
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        report = run_latency(cfg, progress=say)
    except (SopiError, OSError) as exc:
        print(f"sopi-latency: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # the cold-start child failed
        print(f"sopi-latency: error: {exc}", file=sys.stderr)
        return 1
    print(report.format_table())
    if args.json:
        report.save_json(args.json)
        print(f"\nJSON: {args.json}")
    if args.plot:
        out = report.plot(args.plot)
        print(f"plot: {out}" if out else "plot: skipped (matplotlib not installed; pip install 'sopi[plot]')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
