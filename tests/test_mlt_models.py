"""The VOC-MLT / COCO-MLT model of the distribution-balanced loss: the ``pfc`` head and the
backbone's ``norm_eval`` (official code wutong16/DistributionBalancedLoss at 14460d0)."""
import numpy as np
import pytest
import torch

from lttoolbox.errors import ConfigError
from lttoolbox.models import build_head
from lttoolbox.registry import MODELS


def test_pfc_head_is_linear_bn_dropout_linear_computed_by_hand():
    torch.manual_seed(0)
    head = build_head({"name": "pfc", "hidden": 6, "dropout": 0.5}, in_features=10,
                      num_classes=3).eval()
    with torch.no_grad():
        head.bn.running_mean.copy_(torch.linspace(-1, 1, 6))
        head.bn.running_var.copy_(torch.linspace(0.5, 2, 6))
        head.bn.weight.copy_(torch.linspace(0.5, 1.5, 6))
        head.bn.bias.copy_(torch.linspace(-0.2, 0.2, 6))
        head.classifier.bias.copy_(torch.tensor([0.1, -0.1, 0.3]))
    x = torch.randn(4, 10)
    p = {k: v.detach().double().numpy() for k, v in head.state_dict().items()}
    h = x.double().numpy() @ p["embed.weight"].T + p["embed.bias"]
    h = (h - p["bn.running_mean"]) / np.sqrt(p["bn.running_var"] + 1e-5) * p["bn.weight"] \
        + p["bn.bias"]
    expected = h @ p["classifier.weight"].T + p["classifier.bias"]  # dropout: identity in eval
    np.testing.assert_allclose(head(x).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_pfc_head_initialisation_follows_the_official_code():
    torch.manual_seed(0)
    head = build_head("pfc", in_features=2048, num_classes=80)
    # kaiming_normal fan_out on (256, 2048): std sqrt(2 / 256); N(0, 0.01) classifier; zero biases
    assert head.embed.weight.std().item() == pytest.approx(np.sqrt(2 / 256), rel=0.02)
    assert head.classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert not head.embed.bias.any() and not head.classifier.bias.any()
    assert head.bn.weight.eq(1).all() and not head.bn.bias.any()
    with pytest.raises(ConfigError, match="dropout"):
        build_head({"name": "pfc", "dropout": 1.0}, in_features=8, num_classes=2)


@pytest.mark.parametrize("norm_eval", [True, False])
def test_norm_eval_fixes_the_backbone_batchnorm_statistics_only(norm_eval):
    torch.manual_seed(0)
    model = MODELS.build({"name": "resnet10", "norm_eval": norm_eval, "head": "pfc"},
                         num_classes=4, in_channels=3, image_size=32).train()
    stem_bn = model.stem.bn1
    before = stem_bn.running_mean.clone()
    head_before = model.head.bn.running_mean.clone()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert torch.equal(stem_bn.running_mean, before) == norm_eval
    assert stem_bn.weight.grad is not None and stem_bn.weight.grad.abs().sum() > 0
    assert not torch.equal(model.head.bn.running_mean, head_before)  # the head's BN trains
    assert model.head.bn.training and model.training


def test_norm_eval_must_be_a_bool():
    with pytest.raises(ConfigError, match="true or false") as err:
        MODELS.build({"name": "resnet10", "norm_eval": 1}, num_classes=4, in_channels=3,
                     image_size=32)
    assert err.value.key.endswith("norm_eval")
