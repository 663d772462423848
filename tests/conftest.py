"""Shared fixtures and the suite's rules.

- Every test belongs to exactly one tier (unit, cli, e2e, browser; see pyproject.toml), checked
  at collection, so `-m unit` is the fast tier and nothing falls between the tiers.
- Fixed data for the unit tier (`synthetic_run`), tiny models built locally (from_config ->
  save_pretrained, loaded through the real from_pretrained path) for the e2e tier, and the
  README's commands run once per session (`readme_outputs`) for the README, demo and golden
  tests.
- `--regenerate-golden` rewrites the committed demo site (see test_golden.py); nothing else
  ever does.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("unit", "cli", "e2e", "browser")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regenerate-golden",
        action="store_true",
        default=False,
        help="rewrite the committed demo site (site/) from a fresh build instead of comparing",
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: an unmarked test fails any selection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail collection unless every test has exactly one tier marker."""
    wrong = []
    for item in items:
        tiers = [tier for tier in TIERS if item.get_closest_marker(tier)]
        if len(tiers) != 1:
            wrong.append(f"  {item.nodeid}: {' and '.join(tiers) or 'no tier'}")
    if wrong:
        raise pytest.UsageError(
            "every test needs exactly one tier marker (" + ", ".join(TIERS) + "): set "
            "`pytestmark = pytest.mark.<tier>` in the file or mark the test:\n" + "\n".join(wrong)
        )


def file_tier(path: Path) -> str | None:
    """The tier a test file declares for all its tests (`pytestmark = pytest.mark.<tier>` on a
    line of its own), read from its text; None for a file whose tests are marked one by one."""
    found = re.search(r"^pytestmark = pytest\.mark\.(\w+)\s*(#.*)?$", path.read_text("utf-8"), re.M)
    return found.group(1) if found and found.group(1) in TIERS else None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With `-m`, skip importing a test file whose one tier the expression rules out: `-m unit`
    then never imports the engine (torch and transformers take ~8 s), which the e2e files do
    at the top. Files marked test by test are always collected, and deselected as usual."""
    expression = config.getoption("markexpr")
    if not expression or not collection_path.name.startswith("test_"):
        return None
    if collection_path.suffix != ".py" or not collection_path.is_file():
        return None
    tier = file_tier(collection_path)
    if tier is None:
        return None
    try:
        from _pytest.mark.expression import Expression

        selected = Expression.compile(expression).evaluate(lambda name, **_: name == tier)
    except Exception:  # pytest's own parser (internal): on any doubt, collect as usual
        return None
    return True if not selected else None


def in_fresh_processes(
    code: str, *argvs: list[str], env: dict[str, str] | None = None
) -> list[str]:
    """Run `python -c code` once per argument list, side by side, each process with its own hash
    seed (1, 2, ...: set orders differ, as between two users' builds). Waits for all, then fails
    with the stderr of any that failed; returns their outputs. For determinism tests, which must
    compare fresh processes: two runs in one warm process can share caches and hide a
    difference."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {}), "PYTHONHASHSEED": str(n)},
        )
        for n, argv in enumerate(argvs, start=1)
    ]
    done = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, done):
        assert proc.returncode == 0, err
    return [out for out, _ in done]


WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "<|endoftext|>",
    "<CHI>",
    "<MOT>",
    "painted",
    "a",
    "picture",
    "of",
    "horse",
    "cat",
    "dog",
    "ball",
    "my",
    "favorite",
    "animal",
    "is",
    "the",
    "toy",
    "red",
    "big",
    "saw",
    "played",
    "with",
    "ate",
    "an",
    "apple",
    "banana",
    # hostile words the tokenizer knows, so they can be targets too
    "<script>alert(1)</script>",
    '"+alert(1)+"',
    "datum.x",
]


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            mask_token="[MASK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
    )


def _configs():
    import transformers as tf

    n = len(WORDS)
    bert = dict(
        vocab_size=n,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        pad_token_id=0,
    )
    return {
        "gpt2": (
            tf.GPT2LMHeadModel,
            tf.GPT2Config(
                vocab_size=n,
                n_embd=32,
                n_layer=3,
                n_head=4,
                n_positions=40,
                bos_token_id=5,
                eos_token_id=5,
                pad_token_id=0,
            ),
            "gpt",
        ),
        "llama": (
            tf.LlamaForCausalLM,
            tf.LlamaConfig(
                vocab_size=n,
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=40,
                bos_token_id=5,
                eos_token_id=5,
                pad_token_id=0,
            ),
            "gpt",
        ),
        "bert-mlm": (tf.BertForMaskedLM, tf.BertConfig(**bert), "bert"),
        "bert-cls": (
            tf.BertForSequenceClassification,
            tf.BertConfig(
                **bert,
                num_labels=3,
                id2label={0: "neg", 1: "neu", 2: "pos"},
                label2id={"neg": 0, "neu": 1, "pos": 2},
            ),
            "bert",
        ),
        "bert": (tf.BertModel, tf.BertConfig(**bert), "bert"),
    }


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of five tiny random models, one per supported task/architecture."""
    import torch

    root = tmp_path_factory.mktemp("models")
    folders = {}
    for name, (cls, config, tok_kind) in _configs().items():
        torch.manual_seed(0)
        model = cls(config)
        folder = root / name
        model.save_pretrained(folder)
        _tokenizer(tok_kind).save_pretrained(folder)
        folders[name] = folder
    return folders


@pytest.fixture(scope="session")
def loaded(tiny_models):
    """Loaded tiny models in float64 (for exact gradient checks), keyed like tiny_models."""
    from reportgen.engine import load_model

    return {
        name: load_model(path, device="cpu", dtype="float64") for name, path in tiny_models.items()
    }


HOSTILE = "<script>alert(1)</script>"

DEMO_INPUTS = [
    {
        "id": "reference",
        "segments": [
            {"name": "ENV", "text": "<CHI> painted a picture of a horse"},
            {"name": "LAN", "text": "<CHI> my favorite animal is the"},
        ],
        "target": "horse",
        "meta": {"note": "the reference figure's input"},
    },
    {
        "id": "dog",
        "segments": [
            {"name": "ENV", "text": "<MOT> saw a big dog"},
            {"name": "LAN", "text": "<CHI> my favorite animal is the"},
        ],
        "target": "dog",
    },
    {
        "id": '../../hostile "quote" </script>',
        "segments": [
            {"name": "ENV", "text": f"<CHI> played with a {HOSTILE} ball"},
            {"name": "LAN", "text": "<CHI> my favorite toy is the"},
        ],
        "meta": {"origin": '"><img src=x onerror=alert(1)>'},
    },
]


@pytest.fixture(scope="session")
def gpt2_run(tiny_models, tmp_path_factory) -> Path:
    """A run folder computed with the tiny GPT-2 (float32, flow:ENV->LAN), shared by the
    chart, site and browser tests."""
    from reportgen.pipeline import compute
    from reportgen.settings import Settings

    out = tmp_path_factory.mktemp("runs") / "gpt2"
    settings = Settings(model=str(tiny_models["gpt2"]), metric="flow:ENV->LAN", device="cpu")
    compute(DEMO_INPUTS, out, settings, command="reportgen compute (test fixture)")
    return out


UNKNOWN_HOSTILE = "</script><script>alert(1)</script>"
"""A hostile word the tiny models' vocabulary does not hold (it knows HOSTILE itself)."""

UNKNOWN_INPUTS = [
    {
        "id": "young",
        "segments": [
            {"name": "ENV", "text": "<CHI> saw a young zebra"},
            {"name": "LAN", "text": "<CHI> my favorite animal is the"},
        ],
        "target": "horse",
    },
    {
        "id": "hostile",
        "segments": [
            {"name": "ENV", "text": f"<CHI> played with a {UNKNOWN_HOSTILE} ball"},
            {"name": "LAN", "text": "<CHI> my favorite toy is the"},
        ],
        "target": "dog",
    },
    {
        "id": "known",
        "segments": [
            {"name": "ENV", "text": "<MOT> saw a big dog"},
            {"name": "LAN", "text": "<CHI> my favorite animal is the"},
        ],
        "target": "dog",
    },
]
"""Inputs with words the tiny models do not know (they read [UNK] there), and one without."""


@pytest.fixture(scope="session")
def unknown_run(tiny_models, tmp_path_factory) -> Path:
    """UNKNOWN_INPUTS computed with the tiny GPT-2 (float32, no ablation): a run whose entries
    record the words read as [UNK], shared by the record, site and browser tests."""
    from reportgen.pipeline import compute
    from reportgen.settings import Settings

    out = tmp_path_factory.mktemp("runs") / "unknown"
    settings = Settings(model=str(tiny_models["gpt2"]), device="cpu", ablate_k=0)
    compute(UNKNOWN_INPUTS, out, settings, command="reportgen compute (test fixture)")
    return out


LONG_T = 1300
"""The long input's tokens in `long_run` (over data.blocks.LONG_TOKENS: its page is the
block overview; and enough for all BLOCKS blocks, at TOKENS_PER_BLOCK each)."""
LONG_SHAPE = (2, 3)
"""`long_run`'s model: layers × heads."""


@pytest.fixture(scope="session")
def long_run(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random GPT-2 (2 layers × 3 heads) on one LONG_T-token input and one short one,
    stored with --store dense (so pages can be checked against S), shared by the long-input
    browser tests."""
    from benchmarks import fixtures
    from reportgen.pipeline import compute
    from reportgen.settings import Settings

    root = tmp_path_factory.mktemp("long")
    model = fixtures.gpt2(root / "model", *LONG_SHAPE, 24, LONG_T + 8, init=0.3)
    items = [
        fixtures.causal_input(LONG_T, seed=3, ident="long"),
        fixtures.causal_input(12, 4, "short"),
    ]
    settings = Settings(model=str(model), device="cpu", ablate_k=0, store="dense", batch_size=1)
    return compute(items, root / "run", settings, command="reportgen compute (test)")


@pytest.fixture(scope="session")
def long_site(long_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`long_run`'s site (its first page is the long input's)."""
    from reportgen import site
    from reportgen.settings import Settings

    out = tmp_path_factory.mktemp("long-site") / "site"
    site.render_site(long_run, out, Settings())
    return out


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder shaped like `gpt2_run` (the same inputs, 3 layers × 4 heads), made with
    numpy alone: what the unit tier renders and reads back."""
    from synthetic import write_run

    out = tmp_path_factory.mktemp("runs") / "synthetic"
    write_run(out, DEMO_INPUTS)
    return out


# --- the README's commands, run once per session ------------------------------------------------

README = ROOT / "README.md"
# The about page shows when the run was made: fixed, so the demo site is reproducible.
SOURCE_DATE_EPOCH = "1767225600"  # 2026-01-01T00:00:00Z


def readme_commands() -> list[str]:
    """Every `reportgen ...` shell command of the README, continuation lines joined, in order
    and without repeats."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text("utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("reportgen "):
                commands.append(" ".join(line.split("  #")[0].split()))
    return list(dict.fromkeys(commands))


def demo_command() -> str:
    """The README's demo build (`reportgen build ... --out site`), which made the committed
    site/."""
    [command] = [
        c
        for c in readme_commands()
        if shlex.split(c)[:2] == ["reportgen", "build"] and "--out site" in c
    ]
    return command


def command_env() -> dict[str, str]:
    """The environment the README's commands run in: this interpreter's `reportgen` first on
    PATH, no network, a fixed SOURCE_DATE_EPOCH, and one CPU thread: torch splits its sums by
    thread count, so the digits of the demo site (golden) would otherwise depend on how many
    cores the machine has (1 and 2 threads differ on 11 of its 24 pages)."""
    bin_dir = Path(sys.executable).parent
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


PROGRESS_STEPS = ("loading model ", "model loaded in ", "computing ", "rendering", "warning: ")
"""How the command line's progress lines and warnings start on stderr (without a terminal)."""


def error_lines(stderr: str) -> list[str]:
    """stderr without the progress steps a command printed before it failed: what it said of
    the failure (one `error: ...` line for a user's error)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith(PROGRESS_STEPS)]


def scratch_folder(path: Path) -> Path:
    """A working folder like the repository's for the README's commands: `examples/` is the
    project's, `docs/` exists, and every output lands in `path`."""
    (path / "examples").symlink_to(ROOT / "examples")
    (path / "docs").mkdir()
    return path


@pytest.fixture(scope="session")
def readme_outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder where every `reportgen` command of the README has run, once, in README
    order: the demo site (`site/`, with `site/report.html`), the demo run (`runs/demo`) and
    its figure (`docs/figure.png`). The demo build takes ~20 s; the README, demo and golden
    tests share it."""
    scratch = scratch_folder(tmp_path_factory.mktemp("readme"))
    for command in readme_commands():
        done = subprocess.run(
            ["bash", "-c", command], cwd=scratch, capture_output=True, text=True, env=command_env()
        )
        assert done.returncode == 0, f"README command failed: {command}\n{done.stderr}"
    return scratch


@pytest.fixture(scope="session")
def demo_site(readme_outputs: Path) -> Path:
    """The site of the README's demo build (the demo model, flow:ENV->LAN, keys as rows)."""
    site = readme_outputs / "site"
    assert (site / "index.html").is_file(), (
        f"the README's demo build ({demo_command()}) wrote no site"
    )
    return site


@pytest.fixture(scope="session")
def demo_run(readme_outputs: Path) -> Path:
    """The example inputs computed with the embedded demo model (flow:ENV->LAN), by the
    README's `reportgen compute` command."""
    run = readme_outputs / "runs" / "demo"
    assert (run / "manifest.json").is_file(), "the README's compute command wrote no runs/demo"
    return run
