"""Labels you name, without training: a tiny CLIP built here (no hub) labels images by text prompts, as an ordinary
classifier (probabilities, unknown rule, bundle, ONNX export, evaluation, the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli

pytest.importorskip("transformers")

CLASSES = ["receipt", "selfie", "screenshot"]


def tiny_clip(folder: Path) -> Path:
    """A 2-layer CLIP (32-px images, 16-d embeddings) with a character-level CLIP tokenizer, saved to ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["."]:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    torch.manual_seed(0)
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=40, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1, **layers),
                        vision_config=dict(image_size=32, patch_size=8, **layers), projection_dim=16)
    CLIPModel(config).eval().save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def photos(n: int, seed: int = 0) -> list:
    from synthetic_datasets import photo

    return [photo(seed + i, size=(48, 40)) for i in range(n)]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def clf(clip_dir):
    import imclass

    return imclass.load(f"hf:{clip_dir}", classes=CLASSES, backend="torch")


def test_logits_are_clip_similarities(clf, clip_dir):
    """With one template, the network's logits are CLIPModel's own ``logits_per_image`` for those prompts."""
    from transformers import CLIPModel, CLIPTokenizer

    import imclass

    one = imclass.load(f"hf:{clip_dir}", classes=CLASSES, templates=["a photo of a {}."], backend="torch")
    assert one.spec.architecture["family"] == "hf-zero-shot" and one.labels == CLASSES
    batch = np.stack([one.decode(im) for im in photos(4)])
    full = CLIPModel.from_pretrained(clip_dir).eval()
    tokens = CLIPTokenizer.from_pretrained(clip_dir)([f"a photo of a {c}." for c in CLASSES], padding=True,
                                                     return_tensors="pt")
    with torch.no_grad():
        expected = full(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                        pixel_values=_normalise(batch, one.spec.preprocess)).logits_per_image.numpy()
    np.testing.assert_allclose(one.logits(batch), expected, rtol=1e-4, atol=1e-4)


def _normalise(batch: np.ndarray, pre) -> torch.Tensor:
    x = torch.from_numpy(batch).float().permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return (x - mean) / std


def test_probabilities_follow_the_names(clf, clip_dir):
    """Swapping two class names swaps their columns: a label belongs to its name, not to a position."""
    import imclass

    swapped = imclass.load(f"hf:{clip_dir}", classes=[CLASSES[1], CLASSES[0], CLASSES[2]], backend="torch")
    ims = photos(6)
    p, q = clf.predict_proba(ims), swapped.predict_proba(ims)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(q, p[:, [1, 0, 2]], atol=1e-5)
    assert [x.label for x in clf.predict(ims)] == [x.label for x in swapped.predict(ims)]
    # a different name is a different text embedding: the scores change
    other = imclass.load(f"hf:{clip_dir}", classes=["invoice", "selfie", "screenshot"], backend="torch")
    assert np.abs(other.predict_proba(ims)[:, 0] - p[:, 0]).max() > 1e-4


def test_unknown_only_with_a_threshold(clf, clip_dir):
    import imclass

    ims = photos(4)
    assert clf.spec.unknown_threshold is None
    assert all(x.label in CLASSES for x in clf.predict(ims))
    strict = imclass.load(f"hf:{clip_dir}", classes=CLASSES, unknown_threshold=0.99, backend="torch")
    assert [x.label for x in strict.predict(ims)] == ["unknown"] * 4


@pytest.mark.parametrize("classes, problem", [
    (["receipt"], "at least 2 class names"),
    ("receipt, ,", "at least 2 class names"),
    (["a", "b", "a"], "names a class twice: a"),
])
def test_bad_class_lists(clip_dir, classes, problem):
    import imclass

    with pytest.raises(imclass.ParameterError, match=problem):
        imclass.load(f"hf:{clip_dir}", classes=classes)


def test_classes_need_a_clip_style_model(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    import imclass

    with pytest.raises(imclass.ParameterError, match="need a CLIP-style model"):
        imclass.load("default", classes=CLASSES)
    vit = tmp_path / "vit"
    ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, image_size=32, patch_size=8)).save_pretrained(vit)
    with pytest.raises(imclass.ImclassError, match=r"\(vit\) has no image and text towers"):
        imclass.load(f"hf:{vit}", classes=CLASSES)
    with pytest.raises(imclass.ParameterError, match="templates"):
        imclass.load(f"hf:{vit}", classes=CLASSES, templates=["no slot"])


def test_bundle_round_trip_without_text_tower(clf, tmp_path):
    from safetensors import safe_open

    import imclass

    clf.save(tmp_path / "zs")
    with safe_open(str(tmp_path / "zs" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert "text_embeds" in keys and not any(k.startswith("inner.text_model") for k in keys)
    again = imclass.load(tmp_path / "zs", backend="torch")
    assert again.labels == CLASSES and again.spec.architecture["family"] == "hf-zero-shot"
    ims = photos(3)
    np.testing.assert_allclose(again.predict_proba(ims), clf.predict_proba(ims), atol=1e-5)
    # the embedding of a zero-shot model is CLIP's normalised image embedding
    emb = imclass.embed(ims, model=again).vectors
    assert emb.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_onnx_export_and_onnx_runtime(clf, tmp_path):
    import imclass

    res = imclass.export(clf, tmp_path / "zs-onnx")
    assert res.passed and (tmp_path / "zs-onnx" / "model.onnx").is_file()
    onnx = imclass.load(tmp_path / "zs-onnx", backend="onnx")
    ims = photos(5)
    np.testing.assert_allclose(onnx.predict_proba(ims), clf.predict_proba(ims), atol=1e-4)


@pytest.fixture(scope="module")
def named_folders(tmp_path_factory) -> Path:
    """Class folders named like the zero-shot classes (the tiny model's answers are arbitrary but fixed)."""
    from synthetic_datasets import save

    root = tmp_path_factory.mktemp("named")
    for k, c in enumerate(CLASSES[:2]):
        for i, im in enumerate(photos(3, seed=10 * k)):
            save(im, root / c / f"{i}.jpg")
    return root


def test_cli_predict_evaluate_and_export(capsys, clip_dir, named_folders, tmp_path):
    from imclass.cli import main

    assert main(["predict", str(named_folders), "--model", f"hf:{clip_dir}", "--classes", ",".join(CLASSES),
                 "--json", "-q", "--backend", "torch"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 6 and all(r["label"] in CLASSES and r["error"] is None for r in rows)
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("# what the photos are\nreceipt\n\nselfie\nscreenshot\n")
    out = tmp_path / "labels.csv"
    assert main(["predict", str(named_folders), "--model", f"hf:{clip_dir}", "--classes-file", str(classes_file),
                 "--out", str(out), "-q", "--unknown-threshold", "0.99"]) == 0
    text = out.read_text()
    assert text.startswith("path,label,score,error") and text.count(",unknown,") == 6
    assert main(["evaluate", str(named_folders), "--model", f"hf:{clip_dir}", "--classes", "receipt,selfie",
                 "--split", "all", "--json", "-q"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n_evaluated"] == 6 and m["classes"] == ["receipt", "selfie"] and 0 <= m["accuracy"] <= 1
    assert main(["export", "--model", f"hf:{clip_dir}", "--classes", "receipt,selfie", "-o", str(tmp_path / "x"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"]


def test_cli_errors_are_one_line(capsys, clip_dir, named_folders, tmp_path):
    from imclass.cli import main

    assert main(["predict", str(named_folders), "--classes", "a,b"]) == 1
    err = capsys.readouterr().err
    assert "--classes need a CLIP-style model" in err and "Traceback" not in err
    assert main(["predict", str(named_folders), "--model", f"hf:{clip_dir}", "--classes", "a"]) == 1
    assert "--classes needs at least 2 class names" in capsys.readouterr().err
    assert main(["predict", str(named_folders), "--model", f"hf:{clip_dir}", "--classes", "a,b",
                 "--classes-file", str(tmp_path / "c.txt")]) != 0
    assert "not both" in capsys.readouterr().err
    assert main(["predict", str(named_folders), "--model", f"hf:{clip_dir}",
                 "--classes-file", str(tmp_path / "missing.txt")]) != 0
    assert "cannot read" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nothing"), "--model", f"hf:{clip_dir}", "--classes", "a,b"]) == 1
    assert "no such file or folder" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_zero_shot_in_a_subprocess(clip_dir, named_folders):
    r = run_cli("predict", str(named_folders / "receipt"), "--model", f"hf:{clip_dir}", "--classes",
                "receipt,selfie,screenshot", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 3 and all(row["label"] in CLASSES for row in rows)
    assert "Traceback" not in r.stderr and "Loading weights" not in r.stderr
