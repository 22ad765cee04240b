"""Embeddings: what they are (pre-classifier features), the on-disk cache, and probes on other backbones."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import make_image

ARCH = "test_efficientnet"


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory):
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, num_classes=3).eval()
    path = tmp_path_factory.mktemp("timm") / "tiny"
    save_for_hf(model, str(path), model_config={"label_names": ["a", "b", "c"]}, safe_serialization=True)
    return model, path


@pytest.fixture()
def images(tmp_path):
    paths = []
    for cls, colour in (("red", (210, 30, 30)), ("blue", (30, 30, 210))):
        for i in range(6):
            paths.append(make_image(tmp_path / "data" / cls / f"{i}.png", size=(40 + i, 36),
                                    color=tuple(min(255, c + 7 * i) for c in colour)))
    return tmp_path / "data", paths


def test_embeddings_are_the_pre_classifier_features(timm_folder, images, tmp_path):
    from imclass.features import Embedder, EmbeddingCache

    model, path = timm_folder
    _, paths = images
    emb = Embedder(str(path), backend="torch", cache=EmbeddingCache(tmp_path / "e.sqlite3"))
    got = emb.embed(paths[:4]).vectors
    x = np.stack([emb.decode(p) for p in paths[:4]])
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    pre = emb.spec.preprocess
    t = (t - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model.forward_head(model.forward_features(t), pre_logits=True).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    onnx = Embedder(str(path), backend="onnx", cache=False).embed(paths[:4]).vectors
    np.testing.assert_allclose(onnx, want, rtol=1e-3, atol=1e-4)


def test_cache_reuses_vectors_and_computes_duplicates_once(timm_folder, images, tmp_path):
    from imclass.data import load_dataset
    from imclass.features import Embedder, EmbeddingCache, embed_dataset

    _, path = timm_folder
    root, paths = images
    (root / "red" / "copy.png").write_bytes(paths[0].read_bytes())  # same content, another name
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    ds = load_dataset(root)
    cache = EmbeddingCache(tmp_path / "e.sqlite3")
    first = embed_dataset(ds, Embedder(str(path), backend="torch", cache=cache))
    assert first.computed == 12  # 14 rows: one duplicate, one unreadable
    broken = ds.table["path"].str.endswith("broken.png").to_numpy()
    assert first.errors[int(np.flatnonzero(broken)[0])] is not None and np.isnan(first.vectors[broken]).all()
    copy = int(np.flatnonzero(ds.table["path"].str.endswith("copy.png").to_numpy())[0])
    orig = int(np.flatnonzero(ds.table["path"].str.endswith("red/0.png").to_numpy())[0])
    np.testing.assert_array_equal(first.vectors[copy], first.vectors[orig])
    assert cache.count(first.backbone) == 12
    again = embed_dataset(ds, Embedder(str(path), backend="torch", cache=cache))
    assert again.computed == 0 and again.backbone == first.backbone
    np.testing.assert_array_equal(np.nan_to_num(again.vectors), np.nan_to_num(first.vectors))


def test_interrupted_run_keeps_finished_batches(timm_folder, images, tmp_path):
    from imclass.features import Embedder, EmbeddingCache

    _, path = timm_folder
    _, paths = images
    shas = [f"{i:064x}" for i in range(len(paths))]
    cache = EmbeddingCache(tmp_path / "e.sqlite3")

    def crash(n):
        raise KeyboardInterrupt

    emb = Embedder(str(path), backend="torch", cache=cache)
    with pytest.raises(KeyboardInterrupt):
        emb.embed(paths, shas, batch_size=4, workers=0, progress=crash)
    assert cache.count(emb.key) == 4  # the first batch was committed before the crash
    done = emb.embed(paths, shas, batch_size=4, workers=0)
    assert done.computed == len(paths) - 4 and cache.count(emb.key) == len(paths)


@pytest.mark.slow
def test_concurrent_processes_share_one_cache(timm_folder, images, tmp_path):
    _, path = timm_folder
    root, _ = images
    script = textwrap.dedent(f"""
        import sys
        from imclass.data import load_dataset
        from imclass.features import EmbeddingCache, Embedder, embed_dataset
        e = embed_dataset(load_dataset({str(root)!r}), Embedder({str(path)!r}, backend="torch",
                          cache=EmbeddingCache({str(tmp_path / 'e.sqlite3')!r})), batch_size=2, workers=0)
        sys.stdout.write(repr(float(e.vectors.sum())))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    sums = {float(o[0]) for o in outs}
    assert len(sums) == 1
    from imclass.features import EmbeddingCache

    assert EmbeddingCache(tmp_path / "e.sqlite3").count() == 12


def test_probe_on_a_timm_backbone_folder(timm_folder, images, tmp_path):
    import imclass

    _, path = timm_folder
    root, _ = images
    clf, result = imclass.train(root, out=tmp_path / "run", backbone=str(path))
    assert result.metrics["classes"] == ["blue", "red"]
    again = imclass.load(str(tmp_path / "run"), backend="torch")
    assert again.spec.architecture["name"] == ARCH and again.labels == ["blue", "red"]
    x = np.stack([again.decode(p) for p in sorted((root / "red").iterdir())])
    np.testing.assert_allclose(again.logits(x), imclass.Classifier(clf.model, clf.spec, backend="torch").logits(x),
                               rtol=1e-4, atol=1e-4)


def test_probe_on_a_hugging_face_backbone(images, tmp_path):
    transformers = pytest.importorskip("transformers")
    import imclass

    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8, num_labels=7)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    root, _ = images
    clf, _result = imclass.train(root, out=tmp_path / "run", backbone=f"hf:{tmp_path / 'vit'}")
    again = imclass.load(str(tmp_path / "run"), backend="torch")
    assert again.labels == ["blue", "red"] and again.spec.architecture["config"]["num_labels"] == 2
    x = np.stack([again.decode(p) for p in sorted((root / "blue").iterdir())])
    np.testing.assert_allclose(again.logits(x), imclass.Classifier(clf.model, clf.spec, backend="torch").logits(x),
                               rtol=1e-4, atol=1e-4)
