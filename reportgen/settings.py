"""All of reportgen's options, with their defaults in one place.

The command line, the Python API and the tests build a `Settings` and pass it down the pipeline;
a stage reads only the fields it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Options of one reportgen job (compute, render or both)."""

    model: str | None = None
    """Local folder or hub id (resolved from the local cache); None means the demo model."""
    method: str = "attn-grad"
    """Saliency method: attn-grad, attention or attattr."""
    metric: str = "total"
    """Head score shown in the grid: total, prediction or flow:SRC->DST."""
    steps: int = 20
    """Integration steps m of attattr (alpha = k/m, k = 1..m)."""
    batch_size: int = 8
    """Inputs per forward/backward pass."""
    device: str = "auto"
    """cpu, cuda, mps or auto (the best available)."""
    dtype: str = "float32"
    """float32, bfloat16, float16 or float64."""
    max_tokens: int | None = None
    """Longest input allowed, in tokens; None means the model's own limit."""
    truncate: bool = False
    """Cut over-long inputs to max_tokens instead of failing."""
    ablate_k: int = 3
    """Heads zeroed by the ablation check (top-k of the grid, and k random heads)."""
    ablate_draws: int = 8
    """Random head sets averaged for the ablation baseline."""
    seed: int = 0
    """Seed of the random ablation baseline."""
    top_k: int | None = None
    """Cells kept per head in the page data; None means 2 × T, at most 512."""
    keys_as_rows: bool = False
    """Draw keys as heatmap rows (as the reference figure does) instead of queries."""
    title: str | None = None
    """Report title; None derives it from the model and the inputs."""
    templates: Path | None = None
    """Folder of user templates that override the built-in ones."""
    single_file: Path | None = None
    """Also write the whole report as one self-contained HTML file here."""
    force: bool = False
    """Replace an existing output folder that does not look like a reportgen output."""
    quiet: bool = False
    """No progress bars or summary."""

    def override(self, **changes: object) -> Settings:
        """A copy with the given fields replaced; None values (options not given) are skipped."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]
