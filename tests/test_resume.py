"""Resumable runs: a compute killed at any point continues with --resume, and the run folder is
then the one an uninterrupted compute writes, byte for byte; a resume with other inputs, model
or settings is refused, naming what differs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import error_lines
from typer.testing import CliRunner

from reportgen.cli import app
from reportgen.records import PartialRun, Run, partial_folder

EPOCH = "1767225600"
WORDS = [
    *("painted", "a", "picture", "of", "horse", "cat", "dog", "ball", "my", "favorite"),
    *("animal", "is", "the", "toy", "red", "big", "saw", "played", "with", "ate", "an", "apple"),
]
METRIC = "flow:ENV->LAN"


def write_inputs(path: Path, n: int, seed: int = 0) -> Path:
    """`n` two-segment inputs of varied lengths (so batches pad), words the tiny models know."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        env = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 14)))
        lan = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        segments = [
            {"name": "ENV", "text": f"<CHI> {env}"},
            {"name": "LAN", "text": f"<CHI> {lan}"},
        ]
        lines.append(json.dumps({"id": f"x{i}", "segments": segments}))
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too), by relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "SOURCE_DATE_EPOCH": EPOCH,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }


def _command(model: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "reportgen",
        "compute",
        "in.jsonl",
        "--out",
        "run",
        "--model",
        str(model),
        "--metric",
        METRIC,
        "--batch-size",
        "2",
        "--quiet",
        *extra,
    ]


def _kill_after(cwd: Path, model: Path, records: int) -> None:
    """Start a compute in `cwd`, SIGKILL it once `records` records are in its partial run."""
    proc = subprocess.Popen(_command(model), cwd=cwd, env=_env(), stderr=subprocess.DEVNULL)
    folder = cwd / ".run.partial" / "records"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.is_dir() and len(list(folder.glob("*.safetensors"))) >= records:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the compute ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (cwd / "run").exists(), "no run folder until the run is complete"


@pytest.fixture(scope="module")
def uninterrupted(tiny_models, tmp_path_factory) -> Path:
    """The run folder of an uninterrupted compute of 120 inputs (`_command`, in its folder)."""
    whole = tmp_path_factory.mktemp("whole")
    write_inputs(whole / "in.jsonl", 120)
    subprocess.run(_command(tiny_models["gpt2"]), cwd=whole, env=_env(), check=True)
    return whole / "run"


@pytest.mark.cli
@pytest.mark.parametrize("damage", ["none", "torn"])
def test_a_killed_compute_resumes_to_the_uninterrupted_run_byte_for_byte(
    tiny_models, uninterrupted, tmp_path, damage
):
    """SIGKILL mid-run (after the second window's records), then --resume: every file of the
    run folder, the ownership record included, equals an uninterrupted run's. `torn`: also as
    a crash of the machine could leave it: the last entry line cut short and a record missing
    (the resume falls back to the start of the engine's window holding them)."""
    model = tiny_models["gpt2"]
    cut = tmp_path / "cut"
    cut.mkdir()
    write_inputs(cut / "in.jsonl", 120)
    _kill_after(cut, model, 20)
    partial = cut / ".run.partial"
    kept = (partial / "entries.jsonl").read_bytes().splitlines(keepends=True)
    assert len(kept) >= 16, "the partial run holds whole windows' results"
    if damage == "torn":
        lines = kept[:21]
        (partial / "entries.jsonl").write_bytes(b"".join(lines)[:-40])  # line 21 torn
        (partial / "records" / "000019.safetensors").unlink()  # its entry line stays
    done = subprocess.run(_command(model, "--resume"), cwd=cut, env=_env(), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert tree(cut / "run") == tree(uninterrupted)
    assert not partial.exists(), "the partial run is gone once sealed"
    assert sorted(p.name for p in cut.iterdir()) == ["in.jsonl", "run"]


def _interrupted(inputs, out, settings, after_batches: int) -> None:
    """A compute through the Python API, interrupted (KeyboardInterrupt) after some batches."""
    from reportgen.pipeline import compute

    seen = [0]

    def progress(n: int) -> None:
        seen[0] += 1
        if seen[0] > after_batches:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute(inputs, out, settings, progress=progress, command="reportgen compute (test)")


def _settings(model, **changes):
    from reportgen.settings import Settings

    return Settings(model=str(model), metric=METRIC, device="cpu", batch_size=2, **changes)


@pytest.mark.e2e
def test_an_interrupted_compute_keeps_whole_windows_and_resumes(tiny_models, tmp_path, monkeypatch):
    from reportgen.pipeline import compute

    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    inputs = write_inputs(tmp_path / "in.jsonl", 24)
    settings = _settings(tiny_models["gpt2"])
    _interrupted(inputs, tmp_path / "cut", settings, after_batches=9)  # into the 2nd window
    kept = (partial_folder(tmp_path / "cut") / "entries.jsonl").read_text("utf-8").splitlines()
    assert len(kept) == 16, "the first window (8 batches of 2) was written when it ended"
    with pytest.raises(RuntimeError, match="not complete: an interrupted compute left 16"):
        Run.open(tmp_path / "cut")
    resumed = compute(inputs, tmp_path / "cut", settings, command="x", resume=True)
    whole = compute(inputs, tmp_path / "whole", settings, command="reportgen compute (test)")
    assert len(resumed) == 24
    assert tree(resumed.path) == tree(whole.path), "the command and start time of the start"


@pytest.mark.e2e
def test_resume_without_an_interruption(tiny_models, tmp_path):
    """--resume with nothing to resume computes everything; on a complete run of the same
    inputs and settings it does nothing (not a file touched)."""
    from reportgen.pipeline import compute

    inputs = write_inputs(tmp_path / "in.jsonl", 6)
    settings = _settings(tiny_models["gpt2"])
    run = compute(inputs, tmp_path / "run", settings, resume=True)
    assert len(run) == 6
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    again = compute(inputs, tmp_path / "run", settings, resume=True)
    assert len(again) == 6
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == stamps
    write_inputs(inputs, 7)
    with pytest.raises(ValueError, match="is a complete run of other inputs: the inputs: 6 then"):
        compute(inputs, tmp_path / "run", settings, resume=True)


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def interrupted_once(tiny_models, tmp_path_factory) -> Path:
    """A folder with in.jsonl (30 inputs) and the partial run of 16 of them that an
    interrupted compute into `run` left."""
    folder = tmp_path_factory.mktemp("interrupted")
    inputs = write_inputs(folder / "in.jsonl", 30)
    _interrupted(inputs, folder / "run", _settings(tiny_models["gpt2"]), after_batches=9)
    return folder


@pytest.fixture
def interrupted(interrupted_once, tmp_path):
    """A copy of `interrupted_once` for one test: (inputs, run folder)."""
    import shutil

    shutil.copytree(interrupted_once, tmp_path, dirs_exist_ok=True)
    return tmp_path / "in.jsonl", tmp_path / "run"


def _args(inputs, out, model, *extra):
    return ("compute", inputs, "--out", out, "-m", model, "--metric", METRIC, "--device", "cpu",
            "--batch-size", "2", "-q", *extra)  # fmt: skip


@pytest.mark.cli
@pytest.mark.parametrize(
    "change,fragments",
    [
        (["--seed", "5"], ["--seed: 0 then, 5 now"]),
        (["--batch-size", "3"], ["--batch-size: 2 then, 3 now"]),
        (["--store", "dense"], ["--store: top-k then, dense now"]),
        ("model", ["the model's weights (SHA-256):", "then,", "now"]),
        ("inputs", ["the inputs: their content changed (SHA-256"]),
        ("fewer", ["the inputs: 30 then, 29 now"]),
    ],
)
def test_a_resume_with_other_inputs_or_settings_names_what_differs(
    interrupted, tiny_models, change, fragments
):
    inputs, out = interrupted
    model = tiny_models["gpt2"]
    extra: list[str] = []
    if change == "model":
        model = tiny_models["llama"]
    elif change == "inputs":
        lines = inputs.read_text("utf-8").splitlines()
        lines[25] = lines[25].replace("<CHI>", "<MOT>", 1)  # an input not computed yet
        inputs.write_text("\n".join(lines) + "\n", "utf-8")
    elif change == "fewer":
        inputs.write_text("\n".join(inputs.read_text("utf-8").splitlines()[:29]) + "\n", "utf-8")
    else:
        extra = list(change)
    before = tree(partial_folder(out))
    result = _invoke(*_args(inputs, out, model, "--resume", *extra))
    assert result.exit_code == 2, result.output
    message = "\n".join(error_lines(result.stderr))
    assert message.startswith("error: --resume:") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert tree(partial_folder(out)) == before, "the partial run is kept as it was"
    assert not out.exists()


@pytest.mark.cli
def test_a_partial_run_is_never_replaced_silently(interrupted, tiny_models):
    inputs, out = interrupted
    model = tiny_models["gpt2"]
    refused = _invoke(*_args(inputs, out, model))
    assert refused.exit_code == 2
    assert "an interrupted compute left 16 of its inputs" in refused.stderr
    assert "--resume" in refused.stderr and "--force" in refused.stderr
    rendered = _invoke("render", out, "-o", out.parent / "site")
    assert rendered.exit_code == 2 and "finish it with `reportgen compute ... --resume`" in (
        rendered.stderr
    )
    fresh = _invoke(*_args(inputs, out, model, "--force"))
    assert fresh.exit_code == 0, fresh.output
    assert len(Run.open(out)) == 30 and not partial_folder(out).exists()


@pytest.mark.cli
def test_the_interruption_message_says_how_to_resume(tiny_models, tmp_path, monkeypatch):
    import reportgen.engine.runner

    real, calls = reportgen.engine.runner.compute_batch, [0]

    def flaky(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 8:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(reportgen.engine.runner, "compute_batch", flaky)
    inputs = write_inputs(tmp_path / "in.jsonl", 20)
    result = _invoke(*_args(inputs, tmp_path / "run", tiny_models["gpt2"]))
    assert result.exit_code == 130
    assert "16 results are kept in" in result.stderr
    assert "the same command with --resume continues from there" in result.stderr
    monkeypatch.undo()
    resumed = _invoke(*_args(inputs, tmp_path / "run", tiny_models["gpt2"], "--resume"))
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text("utf-8"))
    assert "--resume" not in manifest["run"]["command"], "how it ran is not what it computed"


@pytest.mark.cli
def test_a_failure_before_any_result_leaves_nothing(tiny_models, tmp_path):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "a b", "target": "zebra"}\n', "utf-8")
    result = _invoke(*_args(inputs, tmp_path / "run", tiny_models["gpt2"], "--resume"))
    assert result.exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.unit
def test_one_writer_at_a_time(tmp_path):
    from reportgen.errors import OutputError

    first = PartialRun.claim(tmp_path / "run")
    try:
        with pytest.raises(OutputError, match="is being computed right now by reportgen"):
            PartialRun.claim(tmp_path / "run")
    finally:
        first.release(remove=True)
    PartialRun.claim(tmp_path / "run").release(remove=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
def test_the_valid_prefix_stops_at_the_first_damage(synthetic_run, tmp_path):
    """Whole lines naming whole records, for the expected ids, in order: nothing after the
    first line that is cut, names another input, or whose record is missing or short."""
    from reportgen.records import RunWriter

    run = Run.open(synthetic_run)
    partial = PartialRun.claim(tmp_path / "run")
    partial.start({"run": {}, "inputs": {}, "shard": None, "settings": {}})
    with RunWriter(tmp_path / "run", run.info, partial=partial) as writer:
        for result in run.results():
            writer.add(result)
        ids = list(run.ids)
        assert partial.prefix(ids) == 3
        assert partial.prefix([ids[0], "other", ids[2]]) == 1
        record = partial.path / "records" / "000002.safetensors"
        data = record.read_bytes()
        record.write_bytes(data[:-1])
        assert partial.prefix(ids) == 1, "a record cut short"
        record.write_bytes(data)
        entries = partial.path / "entries.jsonl"
        text = entries.read_bytes()
        entries.write_bytes(text[:-1])
        assert partial.prefix(ids) == 2, "a line without its end"
        entries.write_bytes(text)
        partial.keep(1, ids)
        assert partial.prefix(ids) == 1
        kept = sorted(p.name for p in (partial.path / "records").iterdir())
        assert kept == ["000001.safetensors"]
        writer._count = 1
        for result in list(run.results())[1:]:
            writer.add(result)
    again = Run.open(tmp_path / "run")
    assert again.ids == run.ids
    assert not partial.path.exists()
