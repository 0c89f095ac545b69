"""`sopi-export`: a thin CLI over export.bundle.export_bundle.

Imports torch / onnx only after the options are parsed (so `--help` works on the base install)
and after checking they are installed (else one `error:` line naming the extra, exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from models._cli import (EXIT_CODES_HELP, EXIT_FAILED, EXIT_INPUT, EXIT_OK, EXTRA_MODULES, SopiError,
                         error, paragraphs, require)

EXIT_PARITY = EXIT_FAILED  # bundle written, parity above tolerance
EXIT_ENGINE = 1  # bundle written, but the requested TensorRT engines could not be built here


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sopi-export",
        description=paragraphs(
            "Turn a SOPI checkpoint (upstream container or sopi's own) into a verified "
            "deployment bundle: ONNX graphs of the networks only, a manifest with hashes, "
            "preprocessing and geometry, and an ONNX Runtime vs PyTorch parity report.",
            "Needs PyTorch and ONNX: pip install -e '.[export]'."),
        epilog=paragraphs(
            EXIT_CODES_HELP.format(failed="bundle written but parity above tolerance, or --engine "
                                   "given and the TensorRT engines could not be built here (run "
                                   "sopi-build-engines on the target)"),
            "example: sopi-export vali_model80.pt --checkpoint-2 vali_model3000.pt -o bundle/"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="RTPI or Fine_regnet / Composite_encoder checkpoint (.pt; required)")
    p.add_argument("--checkpoint-2", metavar="PT", help="a second checkpoint, e.g. the encoders (default: none)")
    p.add_argument("-o", "--output", default="bundle", help="bundle folder (default: ./bundle)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; TensorRT 10 reads <= 20)")
    p.add_argument("--fp16", action="store_true",
                   help="also write FP16 graphs (FP32 islands for norms/softmax), parity vs FP32 "
                        "(default: FP32 only)")
    p.add_argument("--engine", action="store_true",
                   help="build TensorRT engines now (needs TensorRT + GPU; same as sopi-build-engines; "
                        "default: off)")
    p.add_argument("--sign-key", metavar="KEY.pem",
                   help="Ed25519 private key (PEM) to sign the bundle with (manifest.sig) when parity passes; "
                        "password, if any, from $SOPI_SIGN_KEY_PASSWORD; needs pip install -e '.[sign]' "
                        "(default: unsigned; docs/security.md)")
    g = p.add_argument_group(
        "training geometry (recorded in the manifest)",
        paragraphs("none of these given: the geometry a sopi-train checkpoint records, else the "
                   "defaults below; some given: the others take their defaults"))
    g.add_argument("--geometry-flag", type=int, default=None,
                   help="upstream downsampling flag (default 4: 128^3 / 0.798 mm px)")
    g.add_argument("--volume-size", type=int, default=None, help="network cube voxels per side N (default 128)")
    g.add_argument("--vol-spacing", type=float, default=None,
                   help="training CT j-spacing in mm (default 3.117188)")
    g.add_argument("--det-size", type=int, default=None, help="detector pixels per side (default 256)")
    g.add_argument("--range-flag", type=int, default=None,
                   help="RTPInet_v1 output-range flag (upstream dataset index; default: the generic ranges)")
    q = p.add_argument_group("parity")
    q.add_argument("--parity-random", type=int, default=2, help="random inputs per network (default 2)")
    q.add_argument("--no-realistic", action="store_true", help="skip the phantom/DRR input (default: use it)")
    q.add_argument("--tolerance", type=float, default=1e-4, help="FP32 relative tolerance (default 1e-4)")
    q.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime threads for parity (default: ONNX Runtime's)")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr (default: progress on stderr)")
    return p


def _geometry(a: argparse.Namespace):
    """The --geometry-flag / --volume-size / --vol-spacing / --det-size geometry, or None."""
    given = (a.geometry_flag, a.volume_size, a.vol_spacing, a.det_size)
    if all(v is None for v in given):
        return None
    from runtime import SopiGeometry

    return SopiGeometry.from_upstream(a.geometry_flag or 4, a.volume_size or 128,
                                      a.vol_spacing or 3.117188, a.det_size or 256)


def _report(res, sign_requested: bool = False) -> int:
    """Parity table on stdout; the exit code."""
    for name, per in res.parity.items():
        for prec, r in per.items():
            print(f"{name}\t{prec}\tmax_rel={r.max_rel:.3e}\t{'PASS' if r.passed else 'FAIL'}")
    print(f"bundle: {res.bundle_dir}")
    if res.signed:
        print(f"signed: {res.bundle_dir / 'manifest.sig'}")
    if not res.passed:
        worst = max(r.max_rel for per in res.parity.values() for r in per.values())
        unsigned = "; bundle not signed" if sign_requested else ""
        error(f"parity above tolerance (max rel {worst:.3e}; see manifest.json 'parity'){unsigned}")
        return EXIT_PARITY
    if res.engine_error:
        error(res.engine_error)
        return EXIT_ENGINE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if not require("sopi-export", "PyTorch and ONNX", EXTRA_MODULES["export"]):
        return EXIT_INPUT
    from export.bundle import ExportOptions, export_bundle

    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if not a.quiet:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        password = os.environ.get("SOPI_SIGN_KEY_PASSWORD")
        opts = ExportOptions(opset=a.opset, fp16=a.fp16, engine=a.engine, geometry=_geometry(a),
                             rtpi_range_flag=a.range_flag, n_random=a.parity_random,
                             realistic=not a.no_realistic, tolerance=a.tolerance, threads=a.threads,
                             sign_key=a.sign_key, sign_password=password.encode() if password else None)
        cks = [a.checkpoint] + ([a.checkpoint_2] if a.checkpoint_2 else [])
        res = export_bundle(cks, a.output, opts, say)
    except (SopiError, OSError, ValueError) as e:  # CheckpointError is a SopiError
        return error(e)
    return _report(res, a.sign_key is not None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
