"""Log a reportgen report to the active Weights & Biases run, as `wandb.Html`."""

from __future__ import annotations

from reportgen.integrations import Source, single_file
from reportgen.settings import Settings


def log_report(source: Source, key: str = "reportgen", settings: Settings | None = None) -> str:
    """Log the single-file report of `source` (a Report, run folder or .html file) under `key`.
    Returns the key it was logged under (as the MLflow helper returns the artifact path).

    `inject=False` keeps W&B from adding its own (remote) stylesheet: the report stays offline."""
    import wandb

    if wandb.run is None:
        raise RuntimeError("no active W&B run: call wandb.init() before log_report")
    with single_file(source, settings) as path:
        html = path.read_text("utf-8")
    wandb.log({key: wandb.Html(html, inject=False)})
    return key
