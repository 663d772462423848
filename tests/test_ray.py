"""Ray: `compute --ray` on a local Ray cluster started here (2 CPUs, 127.0.0.1): the shards
computed by two actors, each with one loaded model, merge into the run a single process
computes, byte for byte but for its command."""

from __future__ import annotations

import json
import os

import pytest
from test_resume import METRIC, tree, write_inputs
from typer.testing import CliRunner

from reportgen.cli import app

EPOCH = "1767225600"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs on 127.0.0.1, for this module only."""
    import ray

    os.environ["SOURCE_DATE_EPOCH"] = EPOCH
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        del os.environ["SOURCE_DATE_EPOCH"]


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.e2e
def test_a_ray_compute_equals_the_single_process_run(cluster, tiny_models, tmp_path):
    """Two actors (one torch thread each, as the single run here) compute 2 shards of a
    Parquet input; the merged run folder is the single run's, but for the manifest's command
    (the start time is the earliest shard's, fixed by SOURCE_DATE_EPOCH); the shards' folder
    is gone once merged."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from reportgen.pipeline import compute
    from reportgen.settings import Settings
    from reportgen.tables import TableInputs

    jsonl = write_inputs(tmp_path / "in.jsonl", 24)
    lines = [json.loads(line) for line in jsonl.read_text("utf-8").splitlines()]
    table = {"id": [x["id"] for x in lines], "segments": [x["segments"] for x in lines]}
    pq.write_table(pa.table(table), tmp_path / "in.parquet", row_group_size=5)
    model = tiny_models["gpt2"]
    options = ["--model", model, "--metric", METRIC, "--batch-size", "2", "--device", "cpu"]
    done = _invoke(
        "compute", tmp_path / "in.parquet", "--out", tmp_path / "ray", *options,
        "--ray", "auto", "--workers", "2", "--quiet",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = Settings(model=str(model), metric=METRIC, batch_size=2, device="cpu")
        single = compute(TableInputs(tmp_path / "in.parquet"), tmp_path / "single", settings)
    finally:
        torch.set_num_threads(threads)
    one, two = tree(single.path), tree(tmp_path / "ray")
    assert sorted(one) == sorted(two) and len(one) == 24 + 3
    differ = sorted(name for name in one if one[name] != two[name])
    assert differ == [".reportgen-manifest.json", "manifest.json"]
    first, second = (json.loads(files["manifest.json"]) for files in (one, two))
    assert second["run"].pop("command").startswith("reportgen compute ")
    first["run"].pop("command")
    assert first == second
    assert first["run"]["parameters"]["torch_threads"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.jsonl", "in.parquet", "ray", "single"
    ]  # fmt: skip


@pytest.mark.cli
def test_ray_options_are_checked_before_any_cluster(tmp_path, monkeypatch):
    import builtins

    inputs = write_inputs(tmp_path / "in.jsonl", 2)
    out = tmp_path / "run"
    for args, message in (
        (["--workers", "2"], "--workers: options of --ray"),
        (["--ray", "auto", "--shard", "1/2"], "--ray and --shard: Ray computes every shard"),
    ):
        result = _invoke("compute", inputs, "--out", out, *args)
        assert result.exit_code == 2 and message in result.stderr, result.output
    (tmp_path / ".run.ray").mkdir()
    result = _invoke("compute", inputs, "--out", out, "--ray", "auto")
    assert result.exit_code == 2, result.output
    assert "an interrupted Ray compute left its shards in" in result.stderr
    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = _invoke("compute", inputs, "--out", out, "--ray", "auto")
    assert result.exit_code == 2, result.output
    assert 'error: --ray needs Ray: pip install "reportgen[ray]"' in result.stderr
    assert not out.exists()


@pytest.mark.e2e
def test_a_ray_dataset_is_read_as_a_data_set(cluster):
    """A `ray.data.Dataset` input: its rows validated as a data set's, in order, named by row."""
    from reportgen.errors import InputError
    from reportgen.integrations.ray import _examples
    from reportgen.tables import TableInputs

    rows = [{"sentence": f"a dog {i}", "gold": i % 2} for i in range(30)]
    dataset = cluster.data.from_items(rows, override_num_blocks=3)
    spec = TableInputs("ignored", text_column="sentence", target_column="gold", sample=5, seed=1)
    got = _examples(dataset, spec, cluster)
    index = [int(e.source.removeprefix("ray-dataset[").removesuffix("]")) for e in got]
    assert len(got) == 5 and index == sorted(index)
    assert [e.text for e in got] == [rows[i]["sentence"] for i in index]
    assert [e.target for e in got] == [str(rows[i]["gold"]) for i in index]
    whole = cluster.data.from_items(rows, override_num_blocks=6)
    in_order = _examples(whole, TableInputs("ignored", text_column="sentence"), cluster)
    assert [e.text for e in in_order] == [r["sentence"] for r in rows]
    bad = cluster.data.from_items([{"sentence": "x"}, {"sentence": ""}])
    with pytest.raises(InputError, match=r"ray-dataset\[1\]: column 'sentence' must be"):
        _examples(bad, TableInputs("ignored", text_column="sentence"), cluster)


def _killed_ray_compute(cluster, cwd, model) -> None:
    """A `compute --ray` in its own process, connected to the test's cluster, SIGKILLed once a
    shard has written its first window of records; returns when its actors are gone too (the
    cluster's CPUs free again), so nothing writes behind the resume."""
    import signal
    import subprocess
    import sys
    import time

    from test_resume import _env

    address = cluster.get_runtime_context().gcs_address
    command = [
        *(sys.executable, "-m", "reportgen", "compute", "in.jsonl", "--out", "run"),
        *("--model", str(model), "--metric", METRIC, "--batch-size", "2", "--device", "cpu"),
        *("--ray", address, "--workers", "2", "--quiet"),
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=cwd, env=_env(), stderr=subprocess.DEVNULL)
    shards = cwd / ".run.ray"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if max((len(list(p.glob("*.safetensors"))) for p in shards.glob("*/records")), default=0):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the Ray compute ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    while time.monotonic() < deadline and cluster.available_resources().get("CPU", 0) < 2:
        time.sleep(0.1)
    assert cluster.available_resources().get("CPU", 0) == 2, "the killed run's actors live on"
    assert not (cwd / "run").exists(), "no run folder until every shard is merged"


@pytest.mark.e2e
def test_a_killed_ray_compute_resumes_and_a_complete_one_is_not_recomputed(
    cluster, tiny_models, tmp_path
):
    """The driver SIGKILLed mid-run (its actors die with it), then `compute --ray --resume`:
    the shards' records already written are kept, and the merged run equals a single-process
    run's but for its command. Then `build --ray --run RUN --resume` on the complete run
    computes nothing (not a file of the run touched) and renders the site from it."""
    import torch

    from reportgen.pipeline import compute
    from reportgen.settings import Settings

    model = tiny_models["gpt2"]
    write_inputs(tmp_path / "in.jsonl", 64)  # 2 shards of 2 windows (16 inputs) and a part
    _killed_ray_compute(cluster, tmp_path, model)
    kept = sorted(p.parent.parent.name for p in (tmp_path / ".run.ray").glob("*/records/*"))
    assert kept, "the killed run left records for --resume"
    options = ["--model", model, "--metric", METRIC, "--batch-size", "2", "--device", "cpu"]
    ray_options = ["--ray", "auto", "--workers", "2", "--resume", "--quiet"]
    done = _invoke("compute", tmp_path / "in.jsonl", "--out", tmp_path / "run", *options,
                   *ray_options)  # fmt: skip
    assert done.exit_code == 0, done.output
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = Settings(model=str(model), metric=METRIC, batch_size=2, device="cpu")
        single = compute(tmp_path / "in.jsonl", tmp_path / "single", settings)
    finally:
        torch.set_num_threads(threads)
    one, two = tree(single.path), tree(tmp_path / "run")
    assert sorted(one) == sorted(two) and len(one) == 64 + 3
    assert sorted(name for name in one if one[name] != two[name]) == [
        ".reportgen-manifest.json", "manifest.json"
    ]  # fmt: skip
    assert not (tmp_path / ".run.ray").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    site = tmp_path / "site"
    built = _invoke("build", tmp_path / "in.jsonl", "--run", tmp_path / "run", "--out", site,
                    *options, *ray_options)  # fmt: skip
    assert built.exit_code == 0, built.output
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == stamps
    assert (site / "index.html").is_file() and len(list((site / "examples").glob("*.html"))) == 64
    assert not (tmp_path / ".run.ray").exists(), "a complete run starts no shards"
    other = _invoke("build", tmp_path / "in.jsonl", "--run", tmp_path / "run", "--out", site,
                    "--force", *options[:-4], "--batch-size", "3", *ray_options)  # fmt: skip
    assert other.exit_code == 2, other.output
    assert "--batch-size: 2 then, 3 now" in other.stderr, other.stderr
