"""What sopi-train and sopi-export share on the command line: exit codes, one-line errors and the
check for the optional extras. Imports neither torch nor onnx (`--help` works on the base install).
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap

from models.errors import ModelsError, SopiError

EXIT_OK = 0  # the job ran and succeeded
EXIT_FAILED = 1  # the job ran but failed (export parity above tolerance, training diverged)
EXIT_INPUT = 2  # usage or input error: bad options, unreadable or wrong file, missing extra

# the modules each extra brings (pyproject.toml [project.optional-dependencies])
EXTRA_MODULES = {"export": ("torch", "onnx", "onnxscript")}

EXIT_CODES_HELP = ("exit codes: 0 ok; 1 the job ran but failed ({failed}); 2 usage or input error "
                   "(bad options, missing or unreadable file, missing optional dependencies)")


class UsageError(ModelsError, ValueError):
    """The command line asks for something that cannot be done (message: what and how to fix it)."""


def error(message: object) -> int:
    """Print `error: <message>` (one line) to stderr; return EXIT_INPUT."""
    text = " ".join(str(message).split()) or type(message).__name__
    print(f"error: {text}", file=sys.stderr)
    return EXIT_INPUT


def paragraphs(*texts: str) -> str:
    """Help text for argparse.RawDescriptionHelpFormatter: each text wrapped, one per line."""
    return "\n".join(textwrap.fill(t, 79, break_on_hyphens=False, break_long_words=False)
                     for t in texts)


def missing(modules: tuple[str, ...]) -> list[str]:
    """The modules of `modules` that are not installed (found without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(tool: str, what: str, modules: tuple[str, ...], extra: str = "export") -> bool:
    """True when `modules` are installed; otherwise one `error:` line naming the extra."""
    lost = missing(modules)
    if not lost:
        return True
    error(f"{tool} needs {what} (not installed: {', '.join(lost)}): pip install -e '.[{extra}]' "
          f"(or pip install 'sopi[{extra}]')")
    return False


__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_INPUT", "EXTRA_MODULES", "EXIT_CODES_HELP", "UsageError",
           "SopiError", "error", "paragraphs", "missing", "require"]
