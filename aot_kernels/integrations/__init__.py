"""Integrations with model libraries, each a submodule imported on first use:
`aot_kernels.integrations.transformers` (`patch` / `unpatch`). Importing one does not import its
library; its functions do."""
import importlib
import importlib.util


def __getattr__(name):
    # PEP 562: `aot_kernels.integrations.<name>` after a plain `import aot_kernels`, for every
    # submodule of this package, without importing any of them (or their libraries) up front.
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
