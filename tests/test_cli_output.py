"""What a person sees: results on stdout, progress and summaries on stderr, a progress bar whose rate and
clock agree with the summary, help text that flows."""

from __future__ import annotations

import re

from conftest import SAMPLES
from imclass.cli import main


def test_results_on_stdout_progress_and_summary_on_stderr(capsys):
    assert main(["predict", str(SAMPLES), "-k", "2"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 4 and all(line.startswith("✓ ") for line in lines)
    assert "espresso" in captured.out and "Labelled 4 images" in captured.err and "Labelled" not in captured.out


def test_bar_and_summary_agree(capsys, tmp_path):
    """The bar's clock starts when labelling starts (after the model is loaded), as the summary's does: the
    two rates describe the same interval; the model's loading time is reported on its own."""
    assert main(["predict", str(SAMPLES), "-o", str(tmp_path / "p.csv"), "-b", "1", "--streams", "1"]) == 0
    err = capsys.readouterr().err
    bar = re.search(r"Labelling\s.*?4/4\s+([\d.]+) img/s", err)
    summary = re.search(r"Labelled 4 images in ([\d.]+)s \(([\d.]+) img/s\) with default \(onnx fp32\); "
                        r"the model loaded in ([\d.]+)s", err)
    assert bar and summary, err
    bar_rate, summary_rate = float(bar.group(1)), float(summary.group(2))
    # the two clocks stop a few milliseconds apart (4 images: tens of ms on a busy machine), so the rates agree
    # only roughly; a bar that also counted the model's loading (here longer than the labelling itself) would be
    # slower than half the summary's rate
    assert 0.5 * summary_rate <= bar_rate <= 2.0 * summary_rate, (bar_rate, summary_rate, summary.group(3))
    assert "0.0 img/s" not in err


def test_help_paragraphs_flow(capsys, monkeypatch):
    """On a wide terminal a paragraph of the help is one line: the docstring's hard line breaks are gone."""
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("TERMINAL_WIDTH", "400")
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if "fits a logistic-regression head" in line)
    assert "seconds once the embeddings are cached" in line and "trains a small VGG-style CNN" in line
