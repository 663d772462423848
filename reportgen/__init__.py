"""reportgen: attention saliency for Hugging Face transformers models, as a static HTML site."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "build", "compare", "compute", "render"]


def __getattr__(name: str) -> Any:
    # The API lives in reportgen.pipeline; importing it lazily keeps `import reportgen` light.
    if name in ("build", "compare", "compute", "render"):
        from reportgen import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'reportgen' has no attribute {name!r}")
