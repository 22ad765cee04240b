"""BatchNorm folding for inference (``imclass.engine.fold``) and its use by ``TorchBackend``."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from torch import nn  # noqa: E402

from imclass.engine.backends import TorchBackend  # noqa: E402
from imclass.engine.fold import fold_batchnorm  # noqa: E402
from imclass.preprocess import Preprocess  # noqa: E402


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BatchNorms are identities (mean 0, var 1, weight 1, bias 0): give them real statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def example(h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_folds_a_timm_efficientnet_exactly_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = randomise_bn(timm.create_model("test_efficientnet", pretrained=False, num_classes=5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = count_bn(model)
    x = example()
    folded, n = fold_batchnorm(model, x[:1])
    assert n == n_bn > 0  # every BatchNorm of this net follows a convolution
    assert count_bn(folded) == 0 and count_bn(model) == n_bn
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class ConvBN(nn.Module):
    """One conv and one BatchNorm; subclasses wire them in ways that must not be folded."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)


class ConvUsedTwice(ConvBN):
    """The conv output feeds the BatchNorm *and* a residual: folding would change the residual."""

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class SharedBlock(ConvBN):
    """One conv + BN pair applied twice (shared weights)."""

    def forward(self, x):
        return self.bn(self.conv(self.bn(self.conv(x))))


def test_a_fold_that_changes_the_outputs_is_refused(caplog):
    model = randomise_bn(ConvUsedTwice())
    out, n = fold_batchnorm(model, example())
    assert n == 0 and out is model
    assert "unfolded" in caplog.text


def test_shared_modules_and_training_mode_are_left_alone():
    shared = randomise_bn(SharedBlock())
    out, n = fold_batchnorm(shared, example())
    assert n == 0 and out is shared
    training = randomise_bn(ConvUsedTwice()).train()
    out, n = fold_batchnorm(training, example())
    assert n == 0 and out is training


def test_torch_backend_runs_the_folded_copy_with_the_same_logits():
    torch.manual_seed(0)
    model = randomise_bn(timm.create_model("test_efficientnet", pretrained=False, num_classes=5))
    pre = Preprocess(input_size=(64, 64))
    batch = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    folded = TorchBackend(model, pre, device="cpu", threads=1)
    plain = TorchBackend(model, pre, device="cpu", threads=1, fold=False)
    assert folded.folded == count_bn(model) > 0 and plain.folded == 0
    assert folded.model is not model and plain.model is model
    np.testing.assert_allclose(folded(batch), plain(batch), rtol=1e-4, atol=1e-4)
