"""Log a reportgen report to the active MLflow run.

MLflow shows HTML artifacts in an iframe with `sandbox="allow-scripts"` and cannot load sibling
artifacts, so the report goes in as one self-contained file.
"""

from __future__ import annotations

from reportgen.integrations import Source, run_folder, single_file
from reportgen.settings import Settings


def log_report(
    source: Source,
    artifact_path: str = "reportgen",
    include_run: bool = False,
    settings: Settings | None = None,
) -> str:
    """Log the single-file report of `source` (a Report, run folder or .html file) as
    `<artifact_path>/report.html` of the active run, and the run folder too if asked.
    Returns the artifact path of the report."""
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError(
            "no active MLflow run: call log_report inside `with mlflow.start_run():`"
        )
    folder = run_folder(source) if include_run else None
    if include_run and folder is None:  # before anything is uploaded
        raise ValueError("include_run=True needs a run folder (a Report with run, or a Run)")
    with single_file(source, settings) as path:
        mlflow.log_artifact(str(path), artifact_path)
        name = path.name
    if folder is not None:
        mlflow.log_artifacts(str(folder), f"{artifact_path}/run")
    return f"{artifact_path}/{name}"
