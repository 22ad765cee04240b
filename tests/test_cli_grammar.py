"""One CLI grammar: every verb's --help agrees with the README's table; the previous release's spellings
still work with a one-line deprecation warning; API parameter errors come out as flag names."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import SAMPLES, make_image
from imclass.cli import legacy_argv, main

ROOT = Path(__file__).resolve().parents[1]


def grammar_table() -> dict[str, dict[str, str]]:
    """The README's grammar table: verb -> {positional, --model, --out, --json}."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## One grammar"):]
    rows = {}
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`imclass "):
            verb = cells[0].strip("`").removeprefix("imclass ")
            rows[verb] = dict(zip(("positional", "--model", "--out", "--json"), cells[1:]))
    return rows


def help_text(capsys, *words: str) -> str:
    assert main([*words, "--help"]) == 0
    return re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)


def has_option(text: str, opt: str) -> bool:
    """Whether the help's option panel lists ``opt`` (a row that starts with it)."""
    return re.search(rf"(?m)^\W*{opt}\b", text) is not None


def test_the_table_covers_every_verb():
    from imclass.cli import app
    from imclass.cli.data import data_app
    from imclass.cli.index import index_app

    verbs = {c.name or c.callback.__name__ for c in app.registered_commands}
    verbs |= {f"data {c.name or c.callback.__name__}" for c in data_app.registered_commands}
    verbs |= {f"index {c.name or c.callback.__name__}" for c in index_app.registered_commands}
    assert set(grammar_table()) == verbs


@pytest.mark.parametrize("verb", sorted(grammar_table()))
def test_help_agrees_with_the_grammar_table(capsys, verb):
    row = grammar_table()[verb]
    text = help_text(capsys, *verb.split())
    assert "Example: imclass " + verb in text
    for opt, short in (("--model", "-m"), ("--out", "-o")):
        present = row[opt] != "-"
        assert has_option(text, opt) == present, (verb, opt)
        if present:
            assert re.search(rf"{opt}\s+{short}\b", text), (verb, opt, short)
    assert has_option(text, "--json") == (row["--json"] != "-"), verb
    if row["positional"] == "-":
        assert "Arguments" not in text, verb
    else:
        assert "Arguments" in text, verb
    assert "--backbone" not in text and "--output " not in text and "--report" not in text  # hidden aliases
    if verb == "explain":
        assert not re.search(r"--method\s+-m\b", text)  # -m is the model everywhere
    if has_option(text, "--workers"):
        assert re.search(r"--workers\s+-w\s+.*Decode threads", text), verb


def test_old_json_file_spelling_is_rewritten():
    assert legacy_argv(["evaluate", "m", "d", "--json", "x.json"]) == ["evaluate", "m", "d", "--json-file", "x.json"]
    assert legacy_argv(["data", "audit", "d", "--json=-"]) == ["data", "audit", "d", "--json"]
    assert legacy_argv(["compare", "a", "b", "--data", "d", "--json", "-"]) == ["compare", "a", "b", "--data", "d",
                                                                                   "--json"]
    assert legacy_argv(["evaluate", "--json", "data/"]) == ["evaluate", "--json", "data/"]  # a flag, then DATA
    assert legacy_argv(["predict", "x", "--json", "y.json"]) == ["predict", "x", "--json", "y.json"]


def test_parameter_errors_name_flags(capsys, tmp_path):
    assert main(["train", str(tmp_path), "--val-fraction", "0.95", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "--val-fraction must be between 0 and 0.9" in err and "Traceback" not in err
    assert main(["data", "clean", str(tmp_path), "--out", str(tmp_path / "c"), "--drop", "typos"]) == 1
    assert "--drop has unknown choices typos" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two")
    for i in range(4):
        make_image(root / "red" / f"r{i}.png", color=(200 + 10 * i, 30, 30))
        make_image(root / "blue" / f"b{i}.png", color=(30, 30, 200 + 10 * i))
    return root


def test_old_spellings_still_work_with_a_warning(capsys, tmp_path, two_classes):
    report = tmp_path / "report"
    assert main(["data", "audit", str(two_classes), "--no-embeddings", "--backbone", "default",
                 "--report", str(report), "--json", str(tmp_path / "a.json")]) == 0
    err = capsys.readouterr().err
    for old in ("--backbone", "--report", "--json FILE"):
        assert f"warning: {old} is deprecated" in err
    assert (report / "audit.html").is_file() and json.loads((tmp_path / "a.json").read_text())["counts"]
    out = tmp_path / "labels.csv"
    assert main(["predict", str(SAMPLES / "coffee.jpg"), "--output", str(out), "-q"]) == 0
    assert "warning: --output is deprecated" in capsys.readouterr().err and out.is_file()


def test_new_spellings(capsys, tmp_path, two_classes):
    assert main(["data", "audit", str(two_classes), "--no-embeddings", "--json", "-q"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["dataset"]["images"] == 8 and "deprecated" not in captured.err
    assert main(["data", "audit", str(two_classes), "--no-embeddings", "-q", "-o", str(tmp_path / "a")]) == 0
    assert {p.name for p in (tmp_path / "a").iterdir()} == {"audit.html", "audit.json"}
    assert "images" in capsys.readouterr().out  # the summary table: results on stdout
    assert main(["models", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert names[0] == "default" and "runs/NAME" in names


def test_old_positional_models_still_work(capsys, tmp_path):
    old = ROOT / "tests" / "fixtures" / "bundle-0.1.0"
    cams = tmp_path / "cams"
    assert main(["explain", str(old), str(SAMPLES / "cat.jpg"), "--out", str(cams), "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning: the positional MODEL is deprecated" in captured.err
    row = json.loads(captured.out)
    assert row["label"] in ("cat", "coffee", "other") and Path(row["overlay"]).parent == cams
    out = tmp_path / "onnx"
    assert main(["export", str(old), "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning: the positional MODEL is deprecated" in captured.err
    assert json.loads(captured.out)["passed"] and (out / "model.onnx").is_file()
    # serve and train: the old spelling is accepted (warning), then a bad option stops them before any work
    assert main(["serve", str(old), "--log-level", "loud"]) == 1
    err = capsys.readouterr().err
    assert "the positional MODEL is deprecated" in err and "--log-level must be one of" in err
    assert main(["serve", "--workers", "2", "--processes", "2"]) == 1
    assert "--processes only" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--backbone", "default", "--val-fraction", "0.95", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--backbone is deprecated" in err and "--val-fraction must be" in err


def test_the_old_server_entry_point_forwards_with_a_warning():
    from imclass.serve.cli import translate

    assert translate(["my-model", "--port", "0", "--workers", "2"]) == [
        "serve", "--model", "my-model", "--port", "0", "--workers", "2"]
    assert translate(["--port", "0"]) == ["serve", "--port", "0"]


@pytest.mark.slow
def test_the_old_server_entry_point_runs_imclass_serve():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "imclass.serve.cli", "--help"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "is deprecated" in res.stderr and "imclass serve --help" in res.stderr
    assert "--graceful-timeout" in res.stdout and "--processes" in res.stdout
