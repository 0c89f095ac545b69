"""`sopi-build-engines`: TensorRT engines for a bundle on this machine (`runtime.networks.engines`).

Exit codes: 0 built, 1 TensorRT/GPU unavailable or the build failed, 2 bad bundle or arguments."""

from __future__ import annotations

import argparse
import os
import sys

from runtime.errors import BundleError, EngineBuildError
from runtime.networks.engines import build_engines

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="sopi-build-engines",
        description="Build TensorRT engines for a sopi bundle on THIS machine (its GPU and "
                    "TensorRT version). Needs TensorRT 10/11 and cuda-python; never torch.",
        epilog="exit codes: 0 built, 1 TensorRT/GPU unavailable or the build failed, 2 bad bundle or arguments")
    p.add_argument("bundle", help="bundle folder written by sopi-export")
    p.add_argument("--precision", action="append", choices=("fp32", "fp16"),
                   help="only these precisions (default: every ONNX graph in the bundle)")
    p.add_argument("--workspace-mb", type=int, default=4096, help="builder workspace (MiB)")
    p.add_argument("--sign-key", metavar="KEY.pem",
                   help="Ed25519 private key (PEM) to sign the bundle with after adding the engines "
                        "(password, if any, from $SOPI_SIGN_KEY_PASSWORD; needs the 'sign' extra). "
                        "Without it a previous signature is removed: sign the bundle again")
    a = p.parse_args(argv)
    password = os.environ.get("SOPI_SIGN_KEY_PASSWORD")
    try:
        recs = build_engines(a.bundle, precisions=tuple(a.precision) if a.precision else None,
                             workspace_mb=a.workspace_mb,
                             progress=lambda m: print(m, file=sys.stderr, flush=True),
                             sign_key=a.sign_key, sign_password=password.encode() if password else None)
    except EngineBuildError as e:
        print(f"sopi-build-engines: error: {e}", file=sys.stderr)
        return 1
    except BundleError as e:
        print(f"sopi-build-engines: error: {e}", file=sys.stderr)
        return 2
    for r in recs:
        print(f"{r.file}\t{r.precision}\t{r.key}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
