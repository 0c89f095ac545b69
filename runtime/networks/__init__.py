"""Trained networks at run time (never torch): the deployment `bundle` (loading, integrity; its
pieces: the `manifest` format and bounded parsing, `manifest_schema` validation, `network_spec`,
safe `bundle_files` access, `signing` with ``manifest.sha256`` / ``manifest.sig``), inference
`backends` (ONNX Runtime, TensorRT), TensorRT `engines`, the SOPI pose parameters
(`sopi_params`), network-input `preprocess`ing, and the `learned` stages of the Registrar (RTPI
init, learned-feature refinement)."""

from runtime.networks.backends import open_network
from runtime.networks.bundle import SCHEMA_VERSION, Bundle, load_bundle, seal_manifest, sign_bundle
from runtime.networks.engines import build_engines
from runtime.networks.learned import BundleNetworks, LearnedOptions
from runtime.networks.signing import PUBLIC_KEY_ENV, public_key_pem
from runtime.networks.sopi_params import SopiGeometry, T_to_sopi, sopi_to_T

__all__ = ["Bundle", "load_bundle", "SCHEMA_VERSION", "sign_bundle", "seal_manifest", "public_key_pem",
           "PUBLIC_KEY_ENV", "open_network", "build_engines", "BundleNetworks", "LearnedOptions", "SopiGeometry",
           "sopi_to_T", "T_to_sopi"]
