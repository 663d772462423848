"""Settings people repeat, from a file: `reportgen.toml` in the working directory, or else the
`[tool.reportgen]` table of its `pyproject.toml`. Keys are the command line's option names
without the dashes (`batch-size = 4`); options given on the command line override them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from reportgen.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_FILE = "reportgen.toml"
PYPROJECT = "pyproject.toml"

_INTS = ("steps", "batch_size", "max_tokens", "ablate_k", "ablate_draws", "seed", "top_k", "pages")
_BOOLS = ("truncate", "keys_as_rows", "quiet", "patching", "ablate_layers")
_PATHS = ("templates", "single_file")
_STRS = (
    "model", "method", "metric", "engine", "device", "dtype", "pairing", "max_memory",
    "device_map", "store", "title", "provenance", "ablation", "effect", "aggregate",
)  # fmt: skip
KEYS: dict[str, str] = {
    **{name: "an integer" for name in _INTS},
    **{name: "true or false" for name in _BOOLS},
    **{name: "a path (a string)" for name in _PATHS},
    **{name: "a string" for name in _STRS},
}
"""The Settings fields a config file may set, with the kind of value each takes. `force` is
left out on purpose: overwriting is decided per command."""


def key_name(field_name: str) -> str:
    """A Settings field as a config key (the option without its dashes): `batch-size`."""
    return field_name.replace("_", "-")


@dataclass(frozen=True)
class Config:
    """The settings a config file gives, by Settings field name; `path` None: no file."""

    path: Path | None = None
    values: dict[str, object] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """The file as messages name it (with its table, for pyproject.toml)."""
        if self.path is None:
            return "no config file"
        return f"{self.path} [tool.reportgen]" if self.path.name == PYPROJECT else str(self.path)


def find_config(folder: Path) -> Config:
    """The config of `folder`: its reportgen.toml, else its pyproject.toml's [tool.reportgen]
    table, else none. A file that cannot be read or has an unknown key is a ConfigError."""
    own = folder / CONFIG_FILE
    if own.is_file():
        return _parse(own, _read(own))
    project = folder / PYPROJECT
    if project.is_file():
        tool = _read(project).get("tool")
        table = tool.get("reportgen") if isinstance(tool, dict) else None
        if table is None:
            return Config()
        if not isinstance(table, dict):
            raise ConfigError(f"{project}: tool.reportgen should be a table ([tool.reportgen])")
        return _parse(project, table)
    return Config()


def _read(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read: {err}") from None


def _parse(path: Path, table: dict[str, object]) -> Config:
    where = Config(path).where
    values: dict[str, object] = {}
    known = {key_name(name): name for name in KEYS}
    for key, value in table.items():
        name = known.get(key)
        if name is None:
            hint = f" (did you mean '{key_name(key)}'?)" if key_name(key) in known else ""
            raise ConfigError(
                f"{where}: unknown key '{key}'{hint}; the keys are the options of the command "
                f"line without dashes: {', '.join(sorted(known))}"
            )
        if not _fits(name, value):
            raise ConfigError(f"{where}: '{key}' should be {KEYS[name]}, got {value!r}")
        values[name] = Path(str(value)) if name in _PATHS else value
    return Config(path, values)


def _fits(name: str, value: object) -> bool:
    if name in _BOOLS:
        return isinstance(value, bool)
    if name in _INTS:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)
