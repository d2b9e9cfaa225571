"""`jaxdiff generate` scale flags: bad --mesh / --sequence-parallel / --attention give a one-line error
and exit code 2 before any model is built (no traceback); on one device `--mesh data=1` runs."""

from __future__ import annotations

import pytest

from jaxdiff import cli


@pytest.fixture(autouse=True)
def only_generate(monkeypatch):
    """Build the parser with `generate` alone, so these tests do not hinge on other subcommands."""
    monkeypatch.setattr(cli, "COMMANDS", {"generate": cli.COMMANDS["generate"]})


def _fails_cleanly(capsys, tmp_path, *flags) -> str:
    out = tmp_path / "never.png"
    assert cli.main(["generate", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("jaxdiff generate: error: ")
    assert not out.exists()
    return lines[0]


def test_mesh_larger_than_the_device_count_is_a_clear_error(capsys, tmp_path):
    line = _fails_cleanly(capsys, tmp_path, "--mesh", "fsdp=3")
    assert "needs 3 devices" in line and "1 are available" in line


def test_unknown_mesh_axis_is_named(capsys, tmp_path):
    line = _fails_cleanly(capsys, tmp_path, "--mesh", "foo=2")
    assert "unknown mesh axis 'foo'" in line and "data, fsdp, tensor, seq" in line


def test_malformed_mesh_spec_is_a_clear_error(capsys, tmp_path):
    line = _fails_cleanly(capsys, tmp_path, "--mesh", "data:two")
    assert "NAME=SIZE" in line


def test_bad_mesh_fails_for_wan_too(capsys, tmp_path):
    out = tmp_path / "never.mp4"
    assert cli.main(["generate", "--family", "wan", "--mesh", "tensor=4", "--out", str(out)]) == 2
    assert "needs 4 devices" in capsys.readouterr().err
    assert not out.exists()


def test_sequence_parallel_needs_a_seq_axis(capsys, tmp_path):
    line = _fails_cleanly(capsys, tmp_path, "--sequence-parallel", "ring")
    assert "--mesh with a 'seq' axis" in line
    line = _fails_cleanly(capsys, tmp_path, "--mesh", "data=1", "--sequence-parallel", "ulysses")
    assert "'seq' axis" in line


def test_unknown_attention_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "--attention", "flash"])
    assert exc.value.code == 2
    assert "invalid choice: 'flash'" in capsys.readouterr().err


def test_export_step_is_flux_and_one_device_only(capsys, tmp_path):
    line = _fails_cleanly(capsys, tmp_path, "--export-step", str(tmp_path / "s"), "--mesh", "data=1")
    assert "drop --mesh" in line
    out = tmp_path / "never.mp4"
    assert cli.main(["generate", "--family", "wan", "--export-step", str(tmp_path / "s"),
                     "--out", str(out)]) == 2
    assert "flux only" in capsys.readouterr().err


def test_help_lists_the_scale_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = capsys.readouterr().out
    for flag in ("--mesh", "--attention", "--sequence-parallel", "--distributed", "--compile-cache",
                 "--export-step"):
        assert flag in text


def test_one_device_mesh_and_xla_attention_run(capsys, tmp_path):
    out = tmp_path / "x.png"
    assert cli.main(["generate", "--out", str(out), "--mesh", "data=1", "--attention", "xla",
                     "--steps", "1", "--height", "32", "--width", "32"]) == 0
    assert out.is_file()
    assert "compiled denoise step on mesh {'data': 1} in" in capsys.readouterr().err
