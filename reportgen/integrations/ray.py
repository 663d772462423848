"""Compute on a Ray cluster: the shards of a run as a Ray Data data set, mapped by actors that
each load the model once, merged at the end.

The driver reads and checks the inputs (before any worker starts), puts them in Ray's object
store, and maps `map_batches` over the data set of shard numbers 1..N with a pool of actors; an
actor computes each shard it is given with `reportgen.pipeline.compute(shard=(i, N))` into a
shard run folder `.NAME.ray/I-of-N` beside `--out` (so `--out` must be on a file system every
worker sees), and the driver joins them with `merge`. The unit of work is a shard, not a row:
a shard is whole windows of the engine's batches, so the merged run equals the run computed in
one process, byte for byte but for its start time. A shard is a resumable compute: after a
failure, the same call with `resume=True` keeps every shard (and part of a shard) already done;
on a run folder a Ray compute completed, it checks the inputs, model and settings and computes
nothing, as a single-process `--resume` does. `build` computes on Ray and renders the site.

Ray comes with the `ray` extra: `pip install "reportgen[ray]"`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reportgen.data.metrics import check_metric
from reportgen.errors import OutputError, ReportgenError, RunError, SettingsError
from reportgen.fsutil import check_outputs
from reportgen.pipeline import (
    Inputs,
    Report,
    _input_path,
    equivalent_command,
    load_examples,
    merge,
    render,
)
from reportgen.pipeline import compute as compute_here
from reportgen.records import Run, is_run
from reportgen.settings import Settings
from reportgen.tables import BATCH_ROWS, Source, TableInputs, read_source

if TYPE_CHECKING:
    import numpy as np

    from reportgen.data.examples import Example

_PASSED_ENV = ("SOURCE_DATE_EPOCH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
"""Environment the driver hands to its actors (a reproducible start time; offline model loads)."""


def shards_folder(out: str | Path) -> Path:
    """Where the shards of a Ray compute of the run folder `out` go: `.NAME.ray` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}.ray"


def compute(
    inputs: Inputs | Any,
    out: str | Path,
    settings: Settings | None = None,
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: int | None = None,
    shards: int | None = None,
    columns: TableInputs | None = None,
    resume: bool = False,
    command: str | None = None,
    keep_shards: bool = False,
) -> Run:
    """Compute saliency for `inputs` into the run folder `out` on a Ray cluster; returns the
    opened run (equal to `reportgen.pipeline.compute`'s but for its start time and command).

    `inputs` are what `pipeline.compute` takes, or a `ray.data.Dataset` whose rows are read as
    a data set's (`columns` names its columns, as `TableInputs` does; its `source` is ignored).
    `address` is the cluster (`auto`: the running one; `local` or None: one started here, or
    the one this process is connected to already). `workers` actors (default: as many as the
    cluster's GPUs, or CPUs, fit) each hold one model on `gpus_per_worker` GPUs (default: 1
    where the cluster has GPUs and --device is not cpu) and `cpus_per_worker` CPUs, which are
    its torch threads (default 1). The inputs are cut into `shards` shards (default: one per
    worker); their run folders are removed once merged, unless `keep_shards`."""
    settings = (settings or Settings()).validate()
    ray = _need_ray()
    examples = _examples(inputs, columns, ray)
    check_metric(settings.metric, examples)
    path = None if _is_dataset(inputs, ray) else _input_path(inputs)
    check_outputs(None, None, path, Path(out), settings.force, run_option="--out")
    folder = shards_folder(out)
    if command is None:
        command = equivalent_command(
            settings, inputs if isinstance(inputs, (str, Path, TableInputs)) else None, out
        )
    if resume and not folder.exists() and is_run(Path(out)):
        return _checked_complete(examples, out, settings, cpus_per_worker, command)
    if folder.exists() and not resume:
        if not settings.force:
            raise OutputError(
                f"{out}: an interrupted Ray compute left its shards in {folder}; add --resume "
                "to continue it, or --force to start over"
            )
        shutil.rmtree(folder)
    started = _connect(ray, address)
    try:
        resources = ray.cluster_resources()
        gpus = gpus_per_worker
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 and settings.device != "cpu" else 0.0
        cpus = 1 if cpus_per_worker is None else cpus_per_worker
        _check_counts(workers, gpus, cpus, shards)
        if workers is None:
            fit = resources.get("GPU", 0) / gpus if gpus else resources.get("CPU", 1) / cpus
            workers = max(1, int(fit))
        count = shards or workers
        folder.mkdir(parents=True, exist_ok=True)
        done = _map_shards(
            ray, examples, settings, folder, count, workers, gpus, cpus, resume, command
        )
    finally:
        if started:
            ray.shutdown()
    problems = [error for error in done["error"] if error]
    if problems:
        raise RunError(f"a Ray worker failed: {problems[0]}")
    ordered = sorted(zip(done["shard"], done["path"], strict=True))
    merged = merge([Path(p) for _, p in ordered], out, settings.force, command=command)
    if not keep_shards:
        shutil.rmtree(folder)  # merge hard-linked (or copied) every record
    return merged


def build(
    inputs: Inputs | Any,
    out: str | Path,
    run_dir: str | Path,
    settings: Settings | None = None,
    *,
    render_progress: Callable[[int], None] | None = None,
    on_computed: Callable[[int], None] | None = None,
    **options: Any,
) -> Report:
    """Compute on a Ray cluster into the run folder `run_dir` (which every worker must see, so
    it is required, unlike `pipeline.build`'s), then render the site `out` from it; `options`
    are `compute`'s. The outputs are checked before any cluster starts; `on_computed` gets the
    number of inputs computed (before rendering starts)."""
    settings = (settings or Settings()).validate()
    path = None if _is_dataset(inputs, _need_ray()) else _input_path(inputs)
    check_outputs(Path(out), settings.single_file, path, Path(run_dir), settings.force)
    run = compute(inputs, run_dir, settings, **options)
    if on_computed is not None:
        on_computed(len(run))
    return render(run, out, settings, render_progress)


def _checked_complete(
    examples: Sequence[Example],
    out: str | Path,
    settings: Settings,
    cpus_per_worker: int | None,
    command: str,
) -> Run:
    """`resume` on a run folder a Ray compute completed: the single-process check (the same
    inputs, weights and settings, the model loaded here with a worker's torch threads, which
    the run records), and nothing computed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1 if cpus_per_worker is None else cpus_per_worker)
    try:
        return compute_here(examples, out, settings, command=command, resume=True)
    finally:
        torch.set_num_threads(threads)


def _need_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SettingsError('--ray needs Ray: pip install "reportgen[ray]"') from None
    return ray


def _is_dataset(inputs: object, ray: Any) -> bool:
    return isinstance(inputs, ray.data.Dataset)


def _examples(inputs: Any, columns: TableInputs | None, ray: Any) -> list[Example]:
    """The inputs, read and checked on the driver; a Ray data set's rows as a data set's."""
    if not _is_dataset(inputs, ray):
        if columns is not None:
            raise SettingsError("columns= names the columns of a ray.data.Dataset input")
        return load_examples(inputs)
    spec = (columns or TableInputs("ray-dataset")).check()
    dataset = inputs

    def batches(names: list[str]) -> Any:
        view = dataset.select_columns(names)
        return view.iter_batches(batch_size=BATCH_ROWS, batch_format="pyarrow")

    # Rows in the data set's order (Ray Data may reorder blocks otherwise): an example's source
    # names its row, and the same rows must give the same run.
    options = dataset.context.execution_options
    kept, options.preserve_order = options.preserve_order, True
    try:
        source = Source("ray-dataset", list(dataset.columns()), dataset.count(), batches)
        return read_source(spec, source)
    finally:
        options.preserve_order = kept


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to (or start) the cluster; whether this call started the connection."""
    if ray.is_initialized():
        return False
    ray.init(
        address=None if address in (None, "local") else address,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def _check_counts(workers: int | None, gpus: float, cpus: int, shards: int | None) -> None:
    for option, value, low in (
        ("--workers", workers, 1),
        ("--cpus-per-worker", cpus, 1),
        ("shards", shards, 1),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise SettingsError(f"{option} must be an integer, got {value!r}")
        if value is not None and value < low:
            raise SettingsError(f"{option} must be at least {low}, got {value}")
    if gpus < 0:
        raise SettingsError(f"--gpus-per-worker must be at least 0, got {gpus}")


def _map_shards(
    ray: Any,
    examples: Sequence[Example],
    settings: Settings,
    folder: Path,
    count: int,
    workers: int,
    gpus: float,
    cpus: int,
    resume: bool,
    command: str,
) -> dict[str, list[Any]]:
    """Every shard computed by the actor pool; (shard, path, error) columns, one row each."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = not settings.quiet
    shards = ray.data.from_items(
        [{"shard": i} for i in range(1, count + 1)], override_num_blocks=count
    )
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    computed = shards.map_batches(
        ShardWorker,
        batch_size=1,
        # one shard in flight per actor: Ray Data's default queues several on the first actor
        # that is ready, which ran both shards of a 2-actor pool on one actor, one by one
        compute=ray.data.ActorPoolStrategy(
            size=min(workers, count), max_tasks_in_flight_per_actor=1
        ),
        num_cpus=cpus,
        num_gpus=gpus,
        fn_constructor_kwargs={
            "examples": [ray.put(list(examples))],
            "settings": settings,
            "folder": str(folder.resolve()),
            "count": count,
            "resume": resume,
            "command": command,
            "threads": cpus,
            "env": env,
        },
    )
    rows = computed.take_all()
    return {
        "shard": [int(r["shard"]) for r in rows],
        "path": [str(r["path"]) for r in rows],
        "error": [str(r["error"]) for r in rows],
    }


class ShardWorker:
    """A Ray actor: the model loaded once, then each shard it is given computed into its run
    folder with `pipeline.compute(..., shard=(i, N), model=...)`."""

    def __init__(
        self,
        examples: list[Any],
        settings: Settings,
        folder: str,
        count: int,
        resume: bool,
        command: str,
        threads: int,
        env: dict[str, str],
    ) -> None:
        import ray
        import torch

        from reportgen.engine import load_model

        os.environ.update(env)
        torch.set_num_threads(threads)
        self.examples = ray.get(examples[0])
        self.settings = settings
        self.folder = Path(folder)
        self.count = count
        self.resume = resume
        self.command = command
        self.model = load_model(
            settings.model,
            device=settings.device,
            dtype=settings.dtype,
            device_map=settings.device_map,
            max_memory=settings.max_memory if settings.device_map else None,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        from reportgen.pipeline import compute as compute_shard

        out: dict[str, list[Any]] = {"shard": [], "path": [], "error": []}
        for index in batch["shard"]:
            i = int(index)
            path = self.folder / f"{i}-of-{self.count}"
            error = ""
            try:
                compute_shard(
                    self.examples,
                    path,
                    self.settings,
                    command=self.command,
                    resume=self.resume,
                    shard=(i, self.count),
                    model=self.model,
                )
            except ReportgenError as err:
                error = f"shard {i}/{self.count}: {err}"
            out["shard"].append(i)
            out["path"].append(str(path))
            out["error"].append(error)
        return out
