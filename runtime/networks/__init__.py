"""Trained networks at run time (never torch): the deployment `bundle` (manifest, hashes),
inference `backends` (ONNX Runtime, TensorRT), TensorRT `engines`, the SOPI pose parameters
(`sopi_params`), network-input `preprocess`ing, and the `learned` stages of the Registrar (RTPI
init, learned-feature refinement)."""

from runtime.networks.backends import open_network
from runtime.networks.bundle import SCHEMA_VERSION, Bundle, load_bundle
from runtime.networks.engines import build_engines
from runtime.networks.learned import BundleNetworks, LearnedOptions
from runtime.networks.sopi_params import SopiGeometry, T_to_sopi, sopi_to_T

__all__ = ["Bundle", "load_bundle", "SCHEMA_VERSION", "open_network", "build_engines", "BundleNetworks",
           "LearnedOptions", "SopiGeometry", "sopi_to_T", "T_to_sopi"]
