"""What a user reads in `--help`, and that a flag is never guessed from a prefix of another."""

from __future__ import annotations

import pytest

from jaxdiff import cli
from jaxdiff.benchmarks import run as bench
from jaxdiff.pipelines import plan_cli


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # no line wrapping inside the phrases looked for


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv + ["--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_an_abbreviated_flag_is_an_unrecognized_argument(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate", "--prompt-emb", "x"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --prompt-emb x" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--he", "generate"],  # top level: `--he` is not `--help`
    ["generate", "--ste", "2"],
    ["convert", "src", "out", "--overw"],
    ["verify", "path", "--toler", "1"],
    ["bench", "--rep", "1"],
    ["plan", "--model", "flux-dev", "--dt", "float32"],
], ids=lambda argv: argv[0])
def test_no_subcommand_accepts_a_prefix_of_a_flag(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_plan_and_bench_entry_points_accept_no_prefix_either(capsys):
    assert plan_cli.main(["--model", "flux-dev", "--dt", "float32"]) == 2
    assert "unrecognized arguments: --dt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--rep", "1"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --rep" in capsys.readouterr().err


def test_top_level_help_says_what_jaxdiff_makes_and_lists_every_command(capsys):
    text = help_text([], capsys)
    assert "image" in text and "video" in text
    assert "wires" not in text  # not the developer docstring
    for name in cli.COMMANDS:
        assert f"    {name} " in text


def test_generate_is_described_as_making_images_and_videos(capsys):
    one_liner = cli.COMMANDS["generate"][1]
    assert "image" in one_liner and "video" in one_liner
    assert one_liner in help_text(["generate"], capsys)


def test_bench_help_lists_the_reduced_sizes(capsys):
    text = help_text(["bench"], capsys)
    assert "the CPU sizes above" not in text
    flux, wan = bench.REDUCED["flux"], bench.REDUCED["wan"]
    assert f"Flux {flux['layers']} double + {flux['single_layers']} single blocks" in text
    assert f"Wan {wan['layers']} layers" in text
    assert f"{wan['height']}×{wan['width']}×{wan['frames']} frames" in text


def test_plan_help_ends_with_examples_and_what_is_exact_in_plain_words(capsys):
    epilog = help_text(["plan"], capsys).split("examples:", 1)[1]
    assert "jaxdiff plan --model" in epilog
    assert "exact" in epilog and "estimated" in epilog
    for internal in ("nnx.", "layers.TOKENS", ".py", "`", "**", "memory_analysis"):
        assert internal not in epilog


def test_plan_help_shows_the_dtype_choices_and_default(capsys):
    text = help_text(["plan"], capsys)
    assert "--dtype {float32,bfloat16,float16}" in text
    assert "(default: bfloat16)" in text


def test_convert_help_names_src_and_out_and_what_overwrite_replaces(capsys):
    text = help_text(["convert"], capsys)
    assert "SRC OUT" in text
    assert "replace OUT if it is a converted jaxdiff checkpoint" in text
