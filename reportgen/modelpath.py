"""Where a model is: a local folder, a hub id in the local cache, or the demo model.

Torch-free, so a command checks its --model before the engine (torch, transformers) is imported;
`reportgen.engine.loading` loads what this finds.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from reportgen.errors import ModelError

__all__ = ["demo_model_path", "resolve_model_path", "weights_sha256"]


def demo_model_path() -> Path:
    """The demo model shipped inside the package."""
    return Path(str(resources.files("reportgen") / "demo_model"))


def resolve_model_path(spec: str | Path | None) -> Path:
    """A local model folder for `spec`: a folder, a hub id in the local cache, or the demo model."""
    if spec is None:
        path = demo_model_path()
        if not (path / "config.json").is_file():
            raise ModelError(f"the demo model is missing from {path}; reinstall reportgen")
        return path
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model folder '{spec}' has no config.json; "
                "pass a folder written by save_pretrained"
            )
        if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
            raise ModelError(
                f"model folder '{spec}' has no weights (*.safetensors or pytorch_model*.bin)"
            )
        return path
    text = str(spec)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise ModelError(f"model folder '{spec}' does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, local_files_only=True))
    except Exception:
        raise ModelError(
            f"model '{spec}' is neither a local folder nor in the Hugging Face cache, and "
            f"reportgen does not download: run `hf download {spec}` first, or pass a local folder"
        ) from None


def weights_sha256(path: Path) -> str:
    """SHA-256 over a model folder's weight files, in name order: the digest a run records
    (`RunInfo.weights_sha256`), computed without torch so that `compare` can decide whether a
    run folder can be reused before any model loads."""
    digest = hashlib.sha256()
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()
