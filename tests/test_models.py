"""Model folders are data: no code from them ever runs, and what cannot be loaded says why."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import error_lines

pytestmark = pytest.mark.cli


def _compute(tmp_path: Path, model: Path, stdin: str = "y\ny\ny\n") -> subprocess.CompletedProcess:
    inputs = tmp_path / "in.txt"
    inputs.write_text("a b\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "reportgen",
            "compute",
            str(inputs),
            "-o",
            str(tmp_path / "run"),
            "-m",
            str(model),
        ],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_a_folder_that_needs_its_own_code_is_refused_and_the_code_never_runs(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "architectures": ["EvilForCausalLM"],
                "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"},
            }
        )
    )
    (folder / "model.safetensors").write_bytes(b"")
    done = _compute(tmp_path, folder)  # "y" on stdin, were anything to ask
    assert done.returncode == 2, done.stderr
    assert "needs code shipped in its folder" in done.stderr and "never runs" in done.stderr
    assert len(error_lines(done.stderr)) == 1
    assert not marker.exists(), "the model folder's code ran"
    assert not (tmp_path / "run").exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_weights_that_would_run_code_are_refused(tiny_models, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models["gpt2"], folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"transformer.wte.weight": _Payload(marker)}, fh)
    done = _compute(tmp_path, folder)
    assert done.returncode == 2, done.stderr
    assert "cannot be loaded" in done.stderr
    assert not marker.exists(), "unpickling ran code"


def test_a_missing_model_folder_is_a_usage_error(tmp_path):
    done = _compute(tmp_path, tmp_path / "nonexistent")
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_a_model_with_fewer_positions_than_the_probe_loads_and_refuses_longer_inputs(
    tiny_models, tmp_path
):
    """The load-time probes fit the model's positions (a fixed 12-token probe died with an
    IndexError on a model of 6); an input over them is a one-line usage error naming it."""
    from transformers import AutoConfig, GPT2LMHeadModel

    from reportgen.engine import compute, load_model
    from reportgen.errors import ReportgenError
    from reportgen.inputs import examples_from_items
    from reportgen.settings import Settings

    folder = tmp_path / "short"
    shutil.copytree(tiny_models["gpt2"], folder)
    config = AutoConfig.from_pretrained(folder)
    config.n_positions = 6
    GPT2LMHeadModel(config).save_pretrained(folder)
    lm = load_model(str(folder), "cpu")
    assert lm.max_tokens == 6
    [short, long] = examples_from_items(
        [{"id": "short", "text": "a b"}, {"id": "long", "text": "a b c d e f g h i j k l"}]
    )
    [result] = compute([short], lm, Settings())
    assert len(result.tokens) <= 6 and result.stats.total.shape[:2] == (lm.num_layers, lm.num_heads)
    with pytest.raises(ReportgenError, match="long"):
        list(compute([long], lm, Settings()))
