"""timm's fine-tuning recipes: layer-wise LR decay, Mixup / CutMix, EMA of the weights (config, CLI, the parts,
end-to-end runs on tiny images, and a resume with EMA that ends where an uninterrupted run does)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import test_finetune_precision as _shared

COLOURS, blobs = _shared.COLOURS, _shared.blobs  # blobs: the precision tests' fixture (same images)

TINY = {"image_size": 32, "batch_size": 12, "loader_workers": 0, "calibrate": False, "unknown_coverage": None}


@pytest.mark.parametrize("bad", [{"layer_decay": 0.0}, {"layer_decay": 1.5}, {"mixup": -0.1}, {"cutmix": -1.0},
                                 {"ema": 0.0}, {"ema": 1.0}, {"ema": 0.99, "devices": 2},
                                 {"layer_decay": 0.75, "mode": "scratch"}])
def test_config_rejects_bad_values(bad):
    from imclass.errors import ParameterError
    from imclass.training.config import TrainConfig

    with pytest.raises(ParameterError, match=next(k for k in bad if k != "mode")):
        TrainConfig(**{"mode": "finetune", **bad})


def test_config_records_the_recipes_only_when_set():
    from imclass.training.config import TrainConfig

    plain = TrainConfig(mode="finetune").to_dict()
    assert not {"layer_decay", "mixup", "cutmix", "ema"} & plain.keys()  # config.json (and resumes) as before
    assert TrainConfig(**plain) == TrainConfig(mode="finetune")
    on = TrainConfig(mode="finetune", layer_decay=0.75, mixup=0.2, cutmix=1.0, ema=0.99)
    assert {k: on.to_dict()[k] for k in ("layer_decay", "mixup", "cutmix", "ema")} == {
        "layer_decay": 0.75, "mixup": 0.2, "cutmix": 1.0, "ema": 0.99}
    assert TrainConfig(**on.to_dict()) == on


def test_default_augmentation_and_learning_rate_for_small_data():
    from imclass.errors import ParameterError
    from imclass.training.config import TrainConfig
    from imclass.training.finetune import DEFAULT_LR

    assert TrainConfig(mode="finetune").augment_preset == "light" and DEFAULT_LR["finetune"] == 3e-3
    assert TrainConfig(mode="scratch").augment_preset == "default"  # a network from random weights: as before
    assert TrainConfig(mode="finetune", augment="heavy").augment_preset == "heavy"
    assert TrainConfig(**{**TrainConfig(mode="finetune").to_dict(), "augment": "default"}).augment_preset == "default"
    with pytest.raises(ParameterError, match="augment"):
        TrainConfig(mode="finetune", augment="strong")


def test_a_run_interrupted_under_the_earlier_defaults_resumes_with_them():
    from imclass.training.config import TrainConfig
    from imclass.training.finetune import run_identity

    # what the earlier release recorded for `imclass train --mode finetune` with its defaults (lr None = 1e-3)
    old_cfg = {k: v for k, v in TrainConfig(mode="finetune", augment="default").to_dict().items()}
    old = {"config": {k: v for k, v in old_cfg.items() if k not in ("device", "workers", "loader_workers", "epochs",
                                                                    "devices", "precision")}, "dataset": "fp"}
    now, earlier = run_identity(TrainConfig(mode="finetune"), 3e-3, "fp")
    assert old != now and old not in earlier  # today's defaults: a different run, not resumed from it
    same, earlier = run_identity(TrainConfig(mode="finetune", augment="default", lr=1e-3), 1e-3, "fp")
    assert old in [same, *earlier]  # the earlier defaults spelled out: it resumes
    assert run_identity(TrainConfig(mode="finetune"), 3e-3, "fp", world=2)[0]["processes"] == 2


def test_layer_decay_groups():
    import timm

    from imclass.errors import ParameterError
    from imclass.training.config import TrainConfig
    from imclass.training.finetune import _layer_scales, _param_groups

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3)
    head = {id(p) for p in model.get_classifier().parameters()}
    lr = {id(p): g["lr"] for g in _param_groups(model, head, 1e-3, TrainConfig(mode="finetune", layer_decay=0.5))
          for p in g["params"]}
    assert lr[id(model.classifier.weight)] == 1e-3  # the head as before
    assert lr[id(model.conv_head.weight)] == lr[id(model.blocks[6][0].conv_pw.weight)] == pytest.approx(1e-4)
    assert lr[id(model.blocks[5][3].conv_pw.weight)] == pytest.approx(5e-5)  # one group below the top
    assert lr[id(model.conv_stem.weight)] == pytest.approx(1e-4 * 0.5 ** 16)  # stem: 16 groups below
    before = _param_groups(model, head, 1e-3, TrainConfig(mode="finetune"))
    same = _param_groups(model, head, 1e-3, TrainConfig(mode="finetune", layer_decay=1.0))
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in before] == \
        [(g["lr"], g["weight_decay"], len(g["params"])) for g in same]
    import torch

    with pytest.raises(ParameterError, match="layer_decay"):
        _layer_scales(torch.nn.Sequential(torch.nn.Linear(2, 2)), set(), 0.5)


def test_mixing_gives_soft_targets_and_keeps_an_odd_image(blobs):
    import torch

    from imclass.training.config import TrainConfig
    from imclass.training.finetune import Mixing

    np.random.seed(0)
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    mixed, soft, idx = Mixing(TrainConfig(mode="finetune", mixup=0.4, cutmix=1.0), 3, False)((x.clone(), y, "i"))
    assert soft.shape == (5, 3) and torch.allclose(soft.sum(1), torch.ones(5)) and idx == "i"
    assert torch.equal(mixed[4], x[4]) and torch.allclose(soft[4], torch.tensor([0.1 / 3, 0.9 + 0.1 / 3, 0.1 / 3]))
    assert not torch.equal(mixed[:4], x[:4])
    multi = torch.tensor([[1, 0, 1], [0, 1, 0]])  # multi-hot targets: mixed, not smoothed (BCE takes them)
    _, soft, _ = Mixing(TrainConfig(mode="finetune", mixup=0.4), 3, True)((x[:2].clone(), multi, None))
    assert torch.allclose(soft + soft.flip(0), torch.ones(2, 3))


def test_soft_target_loss_is_timms_and_hard_targets_are_unchanged(blobs):
    import torch
    from timm.loss import SoftTargetCrossEntropy

    from imclass.data import load_dataset
    from imclass.training.finetune import _loss
    from imclass.training.validation import with_validation

    ds, _ = with_validation(load_dataset(blobs), 0.2, 0)
    loss = _loss(ds, False, "cpu")
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    soft = torch.softmax(torch.randn(6, 3), 1)
    assert float(loss(logits, soft)) == pytest.approx(float(SoftTargetCrossEntropy()(logits, soft)), rel=1e-6)
    ref = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, y)
    assert float(loss(logits, y)) == pytest.approx(float(ref), rel=1e-6)


def test_mixup_run_writes_a_bundle_that_predicts(blobs, tmp_path):
    import imclass

    _, result = imclass.train(blobs, out=tmp_path / "mix", mode="scratch", epochs=2, mixup=0.2, cutmix=1.0,
                              **TINY)
    assert len(result.history) == 2 and all(np.isfinite(h["train_loss"]) for h in result.history)
    assert any("Mixup alpha 0.2 and CutMix alpha 1.0" in n for n in result.notes)
    assert json.loads((tmp_path / "mix" / "config.json").read_text())["mixup"] == 0.2
    again = imclass.load(str(tmp_path / "mix"), backend="torch")
    preds = again.predict([str(p) for p in sorted((blobs / "red").iterdir())[:3]])
    assert len(preds) == 3 and all(p.label in COLOURS for p in preds)


def test_ema_weights_are_validated_and_saved(blobs, tmp_path):
    """One epoch (so the best epoch is the last): the bundle holds the EMA weights of ``last``, not the raw ones."""
    from safetensors.numpy import load_file

    import imclass

    _, result = imclass.train(blobs, out=tmp_path / "ema", mode="scratch", epochs=1, ema=0.9, **TINY)
    assert any("EMA, decay 0.9" in n for n in result.notes)
    saved = load_file(str(tmp_path / "ema" / "model.safetensors"))
    last = load_file(str(tmp_path / "ema" / "checkpoints" / "last.safetensors"))
    raw = {k[len("model."):]: v for k, v in last.items() if k.startswith("model.")}
    ema = {k[len("ema.module."):]: v for k, v in last.items() if k.startswith("ema.module.")}
    assert saved.keys() == raw.keys() == ema.keys()
    weights = [k for k in saved if k.endswith("weight")]
    assert any(not np.allclose(ema[k], raw[k]) for k in weights)
    for k in saved:
        np.testing.assert_array_equal(saved[k], ema[k], err_msg=k)


def test_resume_with_ema_ends_where_an_uninterrupted_run_does(blobs, tmp_path):
    """Stopped after epoch 2's checkpoint, resumed: the same history, raw weights and EMA weights."""
    from safetensors.numpy import load_file

    from imclass.data import load_dataset
    from imclass.training.config import TrainConfig
    from imclass.training.finetune import train_network
    from imclass.training.loop import Callback
    from imclass.training.validation import with_validation

    class Stop(Exception):
        pass

    class StopAfter(Callback):
        order = 95  # after the checkpoint

        def after_epoch(self, run):
            if run.epoch == 1:
                raise Stop

    ds, _ = with_validation(load_dataset(blobs), 0.2, 0)
    cfg = TrainConfig(mode="scratch", epochs=3, ema=0.9, image_size=32, batch_size=8, loader_workers=0)
    clean = train_network(ds, cfg, False, out=tmp_path / "clean")
    with pytest.raises(Stop):
        train_network(ds, cfg, False, out=tmp_path / "cut", callbacks=[StopAfter()])
    resumed = train_network(ds, cfg, False, out=tmp_path / "cut", resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(clean.history, resumed.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    wa = load_file(str(tmp_path / "clean" / "checkpoints" / "last.safetensors"))
    wb = load_file(str(tmp_path / "cut" / "checkpoints" / "last.safetensors"))
    assert wa.keys() == wb.keys() and any(k.startswith("ema.") for k in wa)
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_finetune_with_every_recipe(blobs, tmp_path):
    import imclass

    _, result = imclass.train(blobs, out=tmp_path / "ft", mode="finetune", epochs=1, layer_decay=0.75, mixup=0.2,
                              cutmix=1.0, ema=0.99, **TINY)
    assert any("layer-wise LR decay 0.75" in n for n in result.notes)
    assert imclass.load(str(tmp_path / "ft"), backend="torch").spec.labels == sorted(COLOURS)


@pytest.mark.parametrize(("args", "flag"), [(["--ema", "1.5"], "--ema"), (["--layer-decay", "0"], "--layer-decay"),
                                            (["--mode", "scratch", "--layer-decay", "0.7"], "--layer-decay"),
                                            (["--mixup", "-1"], "--mixup")])
def test_cli_options(blobs, tmp_path, capsys, args, flag):
    from imclass.cli import main

    argv = ["train", str(blobs), "--out", str(tmp_path / "x"), *args]
    if "--mode" not in args:
        argv += ["--mode", "finetune"]
    assert main(argv) != 0
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
