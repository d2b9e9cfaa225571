"""`--overwrite` / `overwrite=True` replaces a converted jaxdiff checkpoint (or an empty folder) and
refuses anything else, touching nothing, before any conversion work starts."""

from __future__ import annotations

import json

import pytest

from flux_fixtures import tiny_torch_flux
from jaxdiff.cli import main as jaxdiff_main
from jaxdiff.convert import checkpoint, convert


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("flux") / "transformer"
    tiny_torch_flux(True).save_pretrained(path)
    return path


def user_folder(path):
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    return path


def untouchable_units():
    raise AssertionError("conversion work started before the output was checked")
    yield  # pragma: no cover


def test_cli_overwrite_leaves_a_folder_of_user_data_alone(diffusers_dir, tmp_path, capsys):
    out = user_folder(tmp_path / "data")
    assert jaxdiff_main(["convert", str(diffusers_dir), str(out), "--overwrite"]) == 2
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp dir either
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1  # one line, and no progress bar: refused before any work
    assert err[0].startswith("jaxdiff convert: error: ")
    assert str(out) in err[0] and "not a converted jaxdiff checkpoint" in err[0]


def test_cli_overwrite_leaves_a_file_alone(diffusers_dir, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    assert jaxdiff_main(["convert", str(diffusers_dir), str(out), "--overwrite"]) == 2
    assert out.read_text() == "keep me"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "not a directory" in err[0]


def test_cli_overwrite_replaces_a_converted_checkpoint(diffusers_dir, tmp_path):
    out = convert(diffusers_dir, tmp_path / "conv", dtype="bfloat16")
    assert jaxdiff_main(["convert", str(diffusers_dir), str(out), "--overwrite"]) == 0
    assert json.loads((out / "jaxdiff.json").read_text())["dtype"] == "float32"
    assert [p.name for p in tmp_path.iterdir()] == ["conv"]


def test_overwrite_replaces_an_empty_folder(diffusers_dir, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    convert(diffusers_dir, out, overwrite=True)
    assert checkpoint.read_meta(out)["family"] == "flux"


def test_write_converted_refuses_to_replace_a_folder_of_user_data(tmp_path):
    out = user_folder(tmp_path / "data")
    with pytest.raises(FileExistsError, match="not a converted jaxdiff checkpoint") as error:
        checkpoint.write_converted(out, family="flux", config={}, dtype="float32",
                                   units=untouchable_units(), overwrite=True)
    assert str(out) in str(error.value)
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_write_converted_refuses_a_folder_whose_json_is_not_ours(tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "jaxdiff.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(FileExistsError, match="not a converted jaxdiff checkpoint"):
        checkpoint.write_converted(out, family="flux", config={}, dtype="float32",
                                   units=untouchable_units(), overwrite=True)
    assert (out / "jaxdiff.json").is_file()
