"""`sopi-export`: a thin CLI over export.bundle.export_bundle."""

from __future__ import annotations

import argparse
import sys
import time

from runtime.sopi_params import SopiGeometry

EXIT_OK, EXIT_PARITY, EXIT_INPUT, EXIT_ENGINE = 0, 1, 2, 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sopi-export",
        description="Turn a SOPI checkpoint (upstream container or sopi's own) into a verified "
                    "deployment bundle: ONNX graphs of the networks only, a manifest with hashes, "
                    "preprocessing and geometry, and an ONNX Runtime vs PyTorch parity report.",
        epilog="exit codes: 0 ok; 1 bundle written but parity above tolerance; 2 bad input "
               "(not a checkpoint, unknown network, bad options); 3 bundle written but TensorRT "
               "engines could not be built here (run sopi-build-engines on the target).\n"
               "example: sopi-export vali_model80.pt --checkpoint-2 vali_model3000.pt -o bundle/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="RTPI or Fine_regnet / Composite_encoder checkpoint (.pt)")
    p.add_argument("--checkpoint-2", metavar="PT", help="a second checkpoint (e.g. the encoders)")
    p.add_argument("-o", "--output", default="bundle", help="bundle folder (default: ./bundle)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; TensorRT 10 reads <= 20)")
    p.add_argument("--fp16", action="store_true",
                   help="also write FP16 graphs (FP32 islands for norms/softmax), parity vs FP32")
    p.add_argument("--engine", action="store_true",
                   help="build TensorRT engines now (needs TensorRT + GPU; same as sopi-build-engines)")
    g = p.add_argument_group("training geometry (recorded in the manifest)")
    g.add_argument("--geometry-flag", type=int, default=None, help="upstream downsampling flag (default 4: 128^3 / 0.798 mm px)")
    g.add_argument("--volume-size", type=int, default=None, help="network cube voxels per side N (default 128)")
    g.add_argument("--vol-spacing", type=float, default=None, help="training CT j-spacing in mm (default 3.117188)")
    g.add_argument("--det-size", type=int, default=None, help="detector pixels per side (default 256)")
    # none given: the geometry recorded in a sopi-train checkpoint, else the defaults above
    g.add_argument("--range-flag", type=int, default=None,
                   help="RTPInet_v1 output-range flag (upstream dataset index; default: the generic ranges)")
    q = p.add_argument_group("parity")
    q.add_argument("--parity-random", type=int, default=2, help="random inputs per network (default 2)")
    q.add_argument("--no-realistic", action="store_true", help="skip the phantom/DRR input")
    q.add_argument("--tolerance", type=float, default=1e-4, help="FP32 relative tolerance")
    q.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for parity")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    from export.bundle import ExportOptions, export_bundle  # torch import after --help
    from models.errors import CheckpointError

    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if not a.quiet:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        given = (a.geometry_flag, a.volume_size, a.vol_spacing, a.det_size)
        geom = None if all(v is None for v in given) else SopiGeometry.from_upstream(
            a.geometry_flag or 4, a.volume_size or 128, a.vol_spacing or 3.117188, a.det_size or 256)
        opts = ExportOptions(opset=a.opset, fp16=a.fp16, engine=a.engine, geometry=geom,
                             rtpi_range_flag=a.range_flag, n_random=a.parity_random,
                             realistic=not a.no_realistic, tolerance=a.tolerance, threads=a.threads)
        cks = [a.checkpoint] + ([a.checkpoint_2] if a.checkpoint_2 else [])
        res = export_bundle(cks, a.output, opts, say)
    except (CheckpointError, ValueError) as e:
        print(f"sopi-export: {e}", file=sys.stderr)
        return EXIT_INPUT
    for name, per in res.parity.items():
        for prec, r in per.items():
            print(f"{name}\t{prec}\tmax_rel={r.max_rel:.3e}\t{'PASS' if r.passed else 'FAIL'}")
    print(f"bundle: {res.bundle_dir}")
    if not res.passed:
        print("sopi-export: parity above tolerance (see manifest.json 'parity')", file=sys.stderr)
        return EXIT_PARITY
    if res.engine_error:
        print(f"sopi-export: {res.engine_error}", file=sys.stderr)
        return EXIT_ENGINE
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
