"""`examples/childes/train.py --checkpoints`: the checkpoints `reportgen compare` reads.

Tiny settings (a few steps, a narrow model) so it runs in seconds; the claims are the script's
own: checkpoint-0 is the initial weights, then one every `--checkpoint-every` steps and the last
step; training is deterministic and saving does not change it (so the final checkpoint of any
schedule has the weights an `--out` run of the same settings has); a mismatch fails loudly;
`--stop-after` ends the same run early; and the folders are what `reportgen.comparison` takes as
a checkpoint folder, in step order. One test trains at the demo's own settings: the first
checkpoints of the committed comparison (site/compare/), rebuilt with the weights it records."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from reportgen.comparison import checkpoint_folders
from reportgen.modelpath import weights_sha256

pytestmark = pytest.mark.e2e

TRAIN = Path(__file__).resolve().parents[1] / "examples" / "childes" / "train.py"
COMPARED = Path(__file__).resolve().parents[1] / "site" / "compare" / "models"
TINY = ["--steps", "6", "--batch", "4", "--width", "24", "--positions", "64", "--warmup", "2"]


def _train(*args: str | Path, sizes: Sequence[str] = TINY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(TRAIN), *sizes, *map(str, args)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip


def _sha(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def every_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    done = _train("--checkpoints", root / "a", "--checkpoint-every", "2", "--out", root / "none")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "has no model.safetensors to check" in done.stdout
    return root


def test_checkpoints_from_step_zero_to_the_last_in_compare_order(every_two: Path) -> None:
    root = every_two / "a"
    assert sorted(p.name for p in root.iterdir()) == [f"checkpoint-{n}" for n in (0, 2, 4, 6)]
    specs = checkpoint_folders(root)
    assert [s.label for s in specs] == ["step 0", "step 2", "step 4", "step 6"]
    for spec in specs:  # each a model folder with its tokenizer
        assert (spec.path / "config.json").is_file()
        assert (spec.path / "tokenizer.json").is_file()
    shas = [_sha(s.path) for s in specs]
    assert len(set(shas)) == len(shas)  # training moved the weights at every save


def test_saving_does_not_change_training_and_the_final_check_holds(every_two: Path) -> None:
    first = every_two / "a"
    # another schedule, checked against the first run's final weights as --out
    done = _train(
        "--checkpoints", every_two / "b", "--checkpoint-every", "3", "--out", first / "checkpoint-6"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "has the same weights as" in done.stdout
    second = every_two / "b"
    assert sorted(p.name for p in second.iterdir()) == [f"checkpoint-{n}" for n in (0, 3, 6)]
    assert _sha(second / "checkpoint-0") == _sha(first / "checkpoint-0")
    assert _sha(second / "checkpoint-6") == _sha(first / "checkpoint-6")


def test_a_final_checkpoint_unlike_out_fails(every_two: Path) -> None:
    done = _train("--checkpoints", every_two / "c", "--out", every_two / "a" / "checkpoint-4")
    assert done.returncode != 0
    assert "differs from" in done.stderr
    inside = _train("--checkpoints", every_two / "a" / "checkpoint-4" / "x", "--out",
                    every_two / "a" / "checkpoint-4")  # fmt: skip
    assert inside.returncode != 0
    assert "give a folder outside --out" in inside.stderr


def test_stopping_early_saves_the_first_checkpoints_of_the_same_run(every_two: Path) -> None:
    done = _train("--checkpoints", every_two / "d", "--checkpoint-every", "2", "--stop-after", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped after step 4 of 6" in done.stdout
    root = every_two / "d"
    assert sorted(p.name for p in root.iterdir()) == [f"checkpoint-{n}" for n in (0, 2, 4)]
    for n in (0, 2, 4):  # the learning-rate schedule and the data are still those of 6 steps
        assert _sha(root / f"checkpoint-{n}") == _sha(every_two / "a" / f"checkpoint-{n}")
    alone = _train("--stop-after", "4", "--out", every_two / "none")
    assert alone.returncode != 0 and "--stop-after needs --checkpoints" in alone.stderr


def _recorded_weights(label: str) -> str:
    """The weights' SHA-256 that a committed comparison model's about page records."""
    about = (COMPARED / label / "about.html").read_text("utf-8")
    found = re.search(r'weights SHA-256</dt><dd><code class="rg-hash">([0-9a-f]{64})<', about)
    assert found, f"site/compare/models/{label}/about.html records no weights SHA-256"
    return found.group(1)


def test_the_committed_comparisons_first_checkpoints_are_rebuilt_bit_for_bit(
    tmp_path: Path,
) -> None:
    """site/compare/ is built from checkpoints the repository does not hold (5.5 MB each):
    README's training command, stopped after step 100, rebuilds its first two, whose weights
    are the ones the committed runs record (about a minute on one core)."""
    done = _train(
        "--checkpoints", tmp_path, "--checkpoint-every", "100", "--stop-after", "100", sizes=()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0", "checkpoint-100"]
    for step in (0, 100):
        assert weights_sha256(tmp_path / f"checkpoint-{step}") == _recorded_weights(f"step-{step}")
