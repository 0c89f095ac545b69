"""Exception type of `runtime.sim`."""

from __future__ import annotations

from runtime.errors import SopiRuntimeError

__all__ = ["SimulatorError", "require"]

_HINT = "install the simulator extra: pip install 'sopi[sim]'"


class SimulatorError(SopiRuntimeError):
    """The X-ray simulator cannot run (missing spekpy/xraydb, invalid configuration or object)."""


def require(module: str):
    """Import an optional dependency (``spekpy`` or ``xraydb``) or raise `SimulatorError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SimulatorError(f"the X-ray simulator needs {module} ({exc}); {_HINT}") from None
