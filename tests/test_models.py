"""Tests of the models family: contracts over every registered model, plus per-model checks
against values computed independently here (hand counts, numpy, slicing expressions)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lttoolbox.models as models_pkg
from lttoolbox.batch import Batch
from lttoolbox.errors import ConfigError
from lttoolbox.models import (HEADS, CosineHead, DigitsCNN, LinearHead, LTModel, PadShortcut,
                              ResNet32, TimmModel, build_head)
from lttoolbox.registry import MODELS
from conftest import PerEntry

# Context the trainer would offer for each model, and the output shapes at every model point
# (without batch) worked out by hand from the architectures; one row per registered model but
# ``timm``, whose points are timm's stages (stage1, ...) and whose architecture is the recipe's:
# tests/test_timm.py holds its contract.
OWN = dict(select=lambda cls: not issubclass(cls, TimmModel))
CONTEXT = PerEntry(MODELS, {
    "resnet32": dict(num_classes=10, in_channels=3, image_size=32),
    "digits_cnn": dict(num_classes=10, in_channels=1, image_size=8),
    # The ImageNet backbones at their smallest input (32 px, the total stride) to keep the
    # contract cheap on a CPU; tests/test_backbones.py checks them at 64 px and against
    # torchvision.
    **{name: dict(num_classes=10, in_channels=3, image_size=32)
       for name in ("resnet10", "resnet50", "resnet152", "resnext50_32x4d")},
    "two_branch_resnet32": dict(num_classes=10, in_channels=3, image_size=32),
    "two_branch_digits_cnn": dict(num_classes=10, in_channels=1, image_size=8),
}, where="CONTEXT in tests/test_models.py", **OWN)


def imagenet_shapes(widths: tuple[int, ...]) -> dict:
    """Point shapes of a torchvision-style ResNet at 32 px: stride 4 after the stem, then 1, 2, 2,
    2."""
    return {"input": (3, 32, 32), "stem": (64, 8, 8), "layer1": (widths[0], 8, 8),
            "layer2": (widths[1], 4, 4), "layer3": (widths[2], 2, 2),
            "layer4": (widths[3], 1, 1), "features": (widths[3],)}


POINT_SHAPES = PerEntry(MODELS, {
    "resnet10": imagenet_shapes((64, 128, 256, 512)),
    **{name: imagenet_shapes((256, 512, 1024, 2048))
       for name in ("resnet50", "resnet152", "resnext50_32x4d")},
    "resnet32": {"input": (3, 32, 32), "stem": (16, 32, 32), "layer1": (16, 32, 32),
                 "layer2": (32, 16, 16), "layer3": (64, 8, 8), "features": (64,)},
    "digits_cnn": {"input": (1, 8, 8), "stem": (32, 8, 8), "layer1": (64, 8, 8),
                   "layer2": (64, 4, 4), "features": (64,)},
    # the default layout, bbn: layer3 holds 4 of the group's 5 blocks, each branch the 5th
    "two_branch_resnet32": {"input": (3, 32, 32), "stem": (16, 32, 32), "layer1": (16, 32, 32),
                            "layer2": (32, 16, 16), "layer3": (64, 8, 8), "features": (128,)},
    "two_branch_digits_cnn": {"input": (1, 8, 8), "stem": (32, 8, 8), "layer1": (64, 8, 8),
                              "features": (128,)},
}, where="POINT_SHAPES in tests/test_models.py", **OWN)
B = 3


def context(name):
    return CONTEXT[name]


def build(name, **cfg):
    torch.manual_seed(0)
    return MODELS.build({"name": name, **cfg}, **context(name))


def images(name, batch=B, seed=1):
    ctx = context(name)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, ctx["in_channels"], ctx["image_size"], ctx["image_size"],
                       generator=g)


def labels(batch=B):
    return torch.arange(batch) % 10


def bn_stats(module):
    return [t.clone() for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


NAMES = CONTEXT.names
# The bottleneck backbones (2048 features: resnet50, resnet152, resnext50_32x4d) take most of this
# file's time, so their contract cases are marked long: README's test command leaves them out,
# .ci/run runs them.
ALL = [pytest.param(name, marks=pytest.mark.long) if POINT_SHAPES[name]["features"][0] >= 2048
       else name for name in NAMES]


def test_registry_lists_the_models():
    assert {"resnet32", "digits_cnn"} <= set(NAMES)
    CONTEXT.check()
    POINT_SHAPES.check()


# ------------------------------------------------------------------------------ contract tests
@pytest.mark.parametrize("name", ALL)
def test_build_and_import(name):
    model = build(name)
    cls = MODELS.get(name)
    assert isinstance(model, LTModel) and type(model) is cls
    assert getattr(models_pkg, cls.__name__) is cls  # importable from the family package
    assert model.point_names[0] == "input" and model.point_names[-1] == "features"
    assert model.point_names == tuple(POINT_SHAPES[name])
    assert model.feature_dim == POINT_SHAPES[name]["features"][0]
    assert model.num_classes == 10


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("head", ["linear", "cosine", {"name": "cosine", "scale": 2.0}])
def test_output_shapes(name, head):
    model = build(name, head=head)
    x = images(name)
    assert model(x).shape == (B, 10)
    assert model.forward_features(x).shape == (B, model.feature_dim)


@pytest.mark.parametrize("name", ALL)
def test_num_classes_from_context(name):
    ctx = dict(context(name), num_classes=7)
    model = MODELS.build({"name": name}, **ctx)
    assert model(images(name)).shape == (B, 7)


@pytest.mark.parametrize("name", ALL)
def test_backward_reaches_every_parameter(name):
    model = build(name).train()
    F.cross_entropy(model(images(name)), labels()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ALL)
def test_per_sample_in_eval(name):
    model = build(name).eval()
    x = images(name, batch=4)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(4)])
    # float32 sums in another order (a batch of 1 takes other CPU kernels) differ slightly: on an
    # AMD EPYC an untrained resnet152's logits (about 1.4e4) differed by 0.17, 1.2e-5 of their
    # size. An eval-mode model that mixed the samples would differ by far more, so the tolerance
    # follows the logits' scale.
    scale = float(batched.abs().max())
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5 * max(1.0, scale))


@pytest.mark.parametrize("name", ALL)
def test_forward_hooked_without_hooks_equals_forward(name):
    model = build(name).eval()
    x = images(name)
    batch = Batch.plain(x, labels())
    with torch.no_grad():
        logits, out = model.forward_hooked(batch, {})
        expected = model(x)
        identity = {s: (lambda h, b: (h, b)) for s in model.point_names}
        logits_id, _ = model.forward_hooked(batch, identity)
    assert torch.equal(logits, expected)
    assert torch.equal(logits_id, expected)
    assert out is batch


@pytest.mark.parametrize("name", ALL)
def test_hooks_called_in_order_with_shapes(name):
    model = build(name).eval()
    x = images(name)
    calls = []

    def spy(point):
        def hook(h, batch):
            assert batch.x is h  # inside a hook batch.x is the point's activation
            calls.append((point, tuple(h.shape)))
            return h, batch
        return hook

    # given in reverse order: the network order must win
    hooks = {s: spy(s) for s in reversed(model.point_names)}
    model.forward_hooked(Batch.plain(x, labels()), hooks)
    assert calls == [(s, (B,) + shape) for s, shape in POINT_SHAPES[name].items()]


@pytest.mark.parametrize("name", ALL)
def test_input_hook_sees_the_images(name):
    model = build(name).eval()
    x = images(name)
    seen = {}

    def hook(h, batch):
        seen["h"] = h
        return h, batch

    model.forward_hooked(Batch.plain(x, labels()), {"input": hook})
    assert seen["h"] is x


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("point", ["input", "layer1", "features"])
def test_hook_can_replace_targets(name, point):
    model = build(name)
    y = labels()
    new_b, new_lam = torch.tensor([5, 6, 7]), torch.tensor([0.25, 0.5, 0.75])

    def mix(h, batch):
        return h, batch.replace(y_b=new_b, lam=new_lam)

    _, out = model.forward_hooked(Batch.plain(images(name), y), {point: mix})
    assert torch.equal(out.y_b, new_b) and torch.equal(out.lam, new_lam)
    assert torch.equal(out.y_a, y) and out.mixed


@pytest.mark.parametrize("name", ALL)
def test_feature_hook_changes_logits(name):
    model = build(name).eval()
    zero = {"features": lambda h, b: (torch.zeros_like(h), b)}
    logits, _ = model.forward_hooked(Batch.plain(images(name), labels()), zero)
    # W @ 0 + b == b for every sample
    assert torch.equal(logits, model.head.bias.detach().expand(B, -1))


@pytest.mark.parametrize("name", ALL)
def test_unknown_hook_lists_points(name):
    model = build(name)
    with pytest.raises(ConfigError) as err:
        model.forward_hooked(Batch.plain(images(name), labels()), {"layer9": lambda h, b: (h, b)})
    for point in model.point_names:
        assert point in str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_hook_returning_wrong_type_is_an_error(name):
    model = build(name)
    with pytest.raises(TypeError, match="stem"):
        model.forward_hooked(Batch.plain(images(name), labels()), {"stem": lambda h, b: h})


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("freeze_bn_stats", [False, True])
def test_freeze_backbone(name, freeze_bn_stats):
    model = build(name)
    model.freeze("backbone", freeze_bn_stats=freeze_bn_stats)
    model.train()
    assert model.frozen == model.point_names[1:]
    assert model.fixed_statistics == (model.point_names[1:] if freeze_bn_stats else ())
    before = bn_stats(model)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    F.cross_entropy(model(images(name)), labels()).backward()
    for pname, p in model.named_parameters():
        if pname.startswith("head."):
            assert p.grad is not None and p.grad.abs().sum() > 0
        else:
            assert not p.requires_grad and p.grad is None, pname
    after = bn_stats(model)
    moved = [not torch.equal(a, b) for a, b in zip(before, after)]
    assert before and (not any(moved) if freeze_bn_stats else all(moved))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.training is not freeze_bn_stats
    assert model.training and model.head.training
    # an optimizer over the trainable parameters only touches the head
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    for k, v in model.named_parameters():
        if not k.startswith("head."):
            assert torch.equal(v, weights[k]), k


@pytest.mark.parametrize("name", ["digits_cnn", "resnet32"])
def test_a_frozen_backbone_normalises_as_an_unfrozen_one_in_train_mode(name):
    """The reference codes of cRT and LWS only set requires_grad = False and train in
    model.train() (classifier-balancing run_networks.py 115-120, 249 at f162ade; Bag of Tricks
    function.py 21-24 at ce7859a): the frozen network must compute what the same network does
    unfrozen in train mode, batch statistics and running-statistics update included."""
    frozen, plain = build(name), build(name)
    frozen.freeze("backbone").train()
    plain.train()
    x = images(name, batch=8)
    torch.testing.assert_close(frozen(x), plain(x), rtol=0, atol=0)
    for a, b in zip(bn_stats(frozen), bn_stats(plain)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    frozen.eval(), plain.eval()
    torch.testing.assert_close(frozen(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_freeze_one_block_and_unfreeze(name):
    model = build(name).train()
    model.freeze("stem", freeze_bn_stats=True)
    stem_before, l1_before = bn_stats(model.stem), bn_stats(model.layer1)
    F.cross_entropy(model(images(name)), labels()).backward()
    assert all(p.grad is None for p in model.stem.parameters())
    assert all(p.grad is not None for p in model.layer1.parameters())
    assert all(torch.equal(a, b) for a, b in zip(stem_before, bn_stats(model.stem)))
    assert not all(torch.equal(a, b) for a, b in zip(l1_before, bn_stats(model.layer1)))
    model.unfreeze()
    assert model.frozen == () and model.fixed_statistics == () and model.stem.training
    assert all(p.requires_grad for p in model.parameters())
    # freezing again without the option lets the statistics move
    model.freeze("stem").train()
    assert model.stem.training and model.fixed_statistics == ()


@pytest.mark.parametrize("name", ALL)
def test_freeze_unknown_point(name):
    model = build(name)
    with pytest.raises(ConfigError, match="backbone") as err:
        model.freeze(["stem", "nope"])
    assert all(point in str(err.value) for point in model.point_names)
    # every point name is accepted (input and features have nothing to freeze)
    model.freeze(list(model.point_names))
    assert model.frozen == model.point_names[1:]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("new_cfg", [None, "linear", "cosine"])
def test_reset_head(name, new_cfg):
    model = build(name)
    old = model.head.weight.detach().clone()
    head = model.reset_head(new_cfg)
    assert head is model.head
    assert model.head.weight.shape == old.shape
    assert not torch.equal(model.head.weight.detach(), old)
    expected = LinearHead if new_cfg in (None, "linear") else CosineHead
    assert type(model.head) is expected
    assert model(images(name)).shape == (B, 10)


@pytest.mark.parametrize("prior,classes,probability", [
    ("uniform", 10, 0.1), ("uniform", 100, 0.01), (0.1, 100, 0.1), (0.25, 3, 0.25)])
def test_linear_head_prior_sets_the_sigmoid_start(prior, classes, probability):
    head = build_head({"name": "linear", "prior": prior}, in_features=16, num_classes=classes)
    # Cui et al. 2019 / Lin et al. 2017: b = -log((1 - pi) / pi), i.e. sigmoid(b) = pi
    expected = -np.log((1 - probability) / probability)
    np.testing.assert_allclose(head.bias.detach().numpy(), np.full(classes, expected), rtol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-head.bias.detach().numpy())), probability,
                               rtol=1e-6)
    if prior == "uniform":  # the reference code's -log(C - 1)
        np.testing.assert_allclose(head.bias.detach().numpy(), -np.log(classes - 1), rtol=1e-6)
    head.bias.data.zero_()
    head.reset_parameters()
    np.testing.assert_allclose(head.bias.detach().numpy(), expected, rtol=1e-6)


def test_linear_head_pytorch_init_is_nn_linears_own():
    """cRT's classifier in both reference codes is a plain nn.Linear (classifier-balancing
    DotProductClassifier.py line 25 at f162ade; Bag of Tricks network.py 179-180 at ce7859a)."""
    torch.manual_seed(5)
    reference = torch.nn.Linear(64, 10)
    torch.manual_seed(5)
    head = build_head({"name": "linear", "init": "pytorch"}, in_features=64, num_classes=10)
    assert torch.equal(head.weight, reference.weight) and torch.equal(head.bias, reference.bias)
    assert head.weight.abs().max() <= 1 / 8  # U(-1/sqrt(in), 1/sqrt(in))
    torch.manual_seed(5)
    default = build_head("linear", in_features=64, num_classes=10)
    assert torch.equal(default.bias, reference.bias)  # the bias is nn.Linear's in both
    assert abs(default.weight.std().item() / np.sqrt(2.0 / 64) - 1) < 0.15  # kaiming_normal_
    with pytest.raises(ConfigError,
                       match="model.head.init: must be one of kaiming_normal, pytorch"):
        build_head({"name": "linear", "init": "xavier"}, in_features=64, num_classes=10)


def test_linear_head_without_prior_keeps_the_default_bias():
    torch.manual_seed(0)
    bias = build_head("linear", in_features=16, num_classes=10).bias.detach()
    assert bias.abs().max() <= 1 / 16 ** 0.5 and bias.unique().numel() == 10


@pytest.mark.parametrize("prior", [0, 1, 1.5, -0.1, True, "flat", [0.1]])
def test_linear_head_rejects_a_bad_prior(prior):
    with pytest.raises(ConfigError, match="prior"):
        build_head({"name": "linear", "prior": prior}, in_features=16, num_classes=10)


def test_linear_head_uniform_prior_needs_two_classes():
    with pytest.raises(ConfigError, match="^model.head.prior: 'uniform' needs at least 2 classes"):
        build_head({"name": "linear", "prior": "uniform"}, in_features=16, num_classes=1)


@pytest.mark.parametrize("name", ALL)
def test_reset_head_keeps_frozen_head_frozen(name):
    model = build(name).freeze("head")
    model.reset_head()
    assert all(not p.requires_grad for p in model.head.parameters())
    with pytest.raises(ConfigError, match="cosine, linear"):
        model.reset_head("nope")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("train", [False, True])
def test_channels_last_matches_contiguous(name, train):
    if train and min(h * w for shape in POINT_SHAPES[name].values() if len(shape) == 3
                     for h, w in [shape[1:]]) == 1:
        pytest.skip("batch statistics over 4 samples of 1x1 maps (an ImageNet backbone at 32 px) "
                    "amplify the two layouts' summation orders chaotically; "
                    "tests/test_backbones.py compares the layouts of every backbone at 64 px")
    model = build(name).train(train)
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = images(name, batch=4)
    layouts = []

    def record(h, b):
        layouts.append(h.is_contiguous(memory_format=torch.channels_last))
        return h, b

    with torch.no_grad():
        expected = model(x)
        hooks = {s: record for s in model.point_names[1:-1]}
        got, _ = twin.forward_hooked(
            Batch.plain(x.contiguous(memory_format=torch.channels_last), labels(4)), hooks)
    # Relative to the output's scale: an untrained 152-layer network in eval mode has logits in
    # the thousands, and the two layouts sum in different orders.
    scale = 1.0 + float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)
    assert all(layouts)  # every 4-D block output stayed channels_last


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name):
    a = build(name).eval()
    torch.manual_seed(5)
    b = MODELS.build({"name": name}, **context(name)).eval()
    x = images(name)
    assert not torch.equal(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


# ----------------------------------------------------------------------------- bad parameters
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("param,value,word", [
    ("num_classes", 1, "num_classes"), ("num_classes", 0, "num_classes"),
    ("num_classes", 2.5, "num_classes"), ("num_classes", True, "num_classes"),
    ("in_channels", 0, "in_channels"), ("image_size", 1, "image_size"),
    ("image_size", "big", "image_size"),
    ("head", "nope", "cosine, linear"), ("head", 3, "head"),
    ("head", {"scale": 2.0}, "name"),
    ("head", {"name": "cosine", "scale": 0}, "scale"),
    ("head", {"name": "cosine", "scale": "x"}, "scale"),
    ("head", {"name": "cosine", "bogus": 1}, "bogus"),
    ("head", {"name": "linear", "num_classes": 3}, "num_classes"),
    ("bogus", 1, "bogus"),
])
def test_bad_parameters(name, param, value, word):
    with pytest.raises(ConfigError) as err:
        MODELS.build({"name": name, param: value}, **context(name))
    assert word in str(err.value)
    assert str(err.value).startswith("model")


@pytest.mark.parametrize("name", ALL)
def test_in_channels_mismatch(name):
    model = build(name)
    c = context(name)["in_channels"]
    x = torch.randn(2, c + 1, 8, 8)
    with pytest.raises(ConfigError, match=f"in_channels={c}"):
        model(x)
    with pytest.raises(ConfigError, match=f"in_channels={c}"):
        model.forward_hooked(Batch.plain(x, labels(2)), {"stem": lambda h, b: (h, b)})


@pytest.mark.parametrize("name", ALL)
def test_recipe_in_channels_differs_from_data(name):
    c = context(name)["in_channels"]
    model = MODELS.build({"name": name, "in_channels": c + 2}, **context(name))
    with pytest.raises(ConfigError, match="in_channels"):
        model(images(name))


# ----------------------------------------------------------------------------------- resnet32
def test_resnet32_parameter_count_by_hand():
    def conv(cin, cout):  # 3x3, no bias
        return cin * cout * 9

    def bn(c):  # gamma and beta; running stats are buffers
        return 2 * c

    stem = conv(3, 16) + bn(16)
    group1 = 5 * (2 * conv(16, 16) + 2 * bn(16))
    group2 = (conv(16, 32) + conv(32, 32) + 2 * bn(32)) + 4 * (2 * conv(32, 32) + 2 * bn(32))
    group3 = (conv(32, 64) + conv(64, 64) + 2 * bn(64)) + 4 * (2 * conv(64, 64) + 2 * bn(64))
    head = 64 * 10 + 10
    hand = stem + group1 + group2 + group3 + head
    assert hand == 464154  # ~0.46M, He et al. Table 6
    model = ResNet32(num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == hand
    # 31 convs + 1 linear = 32 weighted layers, and no parameter in the shortcuts
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 31 and all(m.bias is None for m in convs)
    assert sum(p.numel() for m in model.modules() if isinstance(m, PadShortcut)
               for p in m.parameters()) == 0


def test_resnet32_cosine_head_has_no_bias():
    model = ResNet32(num_classes=10, head="cosine")
    assert sum(p.numel() for p in model.head.parameters()) == 64 * 10


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_option_a_shortcut(layout):
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=layout)
    out = PadShortcut(16, 32, stride=2)(x)
    expected = torch.cat([x[:, :, ::2, ::2], torch.zeros(2, 16, 4, 4)], dim=1)
    assert torch.equal(out, expected)
    if layout is torch.channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("group,cin,cout", [("layer2", 16, 32), ("layer3", 32, 64)])
def test_first_block_of_a_group_uses_the_padding_shortcut(group, cin, cout):
    model = ResNet32(num_classes=10).eval()
    block = getattr(model, group)[0]
    with torch.no_grad():
        block.conv2.weight.zero_()  # residual branch -> bn2(0) == beta == 0 in eval
    x = torch.rand(2, cin, 16, 16)
    expected = torch.relu(torch.cat([x[:, :, ::2, ::2], torch.zeros(2, cout - cin, 8, 8)], 1))
    with torch.no_grad():
        assert torch.equal(block(x), expected)


def test_resnet32_kaiming_init():
    torch.manual_seed(0)
    model = ResNet32(num_classes=10)
    conv = model.layer3[1].conv1.weight  # fan_in 64 * 9
    assert abs(conv.std().item() / np.sqrt(2.0 / 576) - 1) < 0.05
    assert abs(conv.mean().item()) < 0.01
    assert abs(model.head.weight.std().item() / np.sqrt(2.0 / 64) - 1) < 0.15


# -------------------------------------------------------------------------------------- heads
def test_heads_registry():
    assert {"linear", "cosine"} <= set(HEADS.names())


@pytest.mark.parametrize("head", HEADS.names())
def test_every_head_builds_and_resets(head):
    """A head initialises itself, or (``adopt``) takes over a trained linear head."""
    torch.manual_seed(0)
    module = build_head(head, in_features=8, num_classes=4)
    assert module(torch.randn(5, 8)).shape == (5, 4)
    if module.follows:  # it takes over the previous head (Head.adopt)
        trained = build_head("linear", in_features=8, num_classes=4)
        module.adopt(trained)
        assert torch.equal(module.weight, trained.weight.detach())
        assert "linear" in module.follows
        return
    before = [p.detach().clone() for p in module.parameters()]
    module.reset_parameters()  # a fresh random draw of its weights
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, module.parameters()))


def test_linear_head_formula():
    head = build_head({"name": "linear"}, in_features=6, num_classes=4)
    f = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    w, b = head.weight.detach().numpy(), head.bias.detach().numpy()
    np.testing.assert_allclose(head(torch.from_numpy(f)).detach().numpy(), f @ w.T + b,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_cosine_head_formula(scale):
    torch.manual_seed(0)
    head = build_head({"name": "cosine", "scale": scale}, in_features=6, num_classes=4)
    f = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float64)
    w = head.weight.detach().numpy().astype(np.float64)
    cos = np.array([[fi @ wj / (np.linalg.norm(fi) * np.linalg.norm(wj)) for wj in w] for fi in f])
    got = head(torch.from_numpy(f).float()).detach().numpy()
    np.testing.assert_allclose(got, scale * cos, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(got) <= scale + 1e-6)


def test_cosine_head_is_invariant_to_norms_and_bounded():
    torch.manual_seed(0)
    head = CosineHead(16, 10)
    f = torch.randn(8, 16) * 100
    logits = head(f)
    assert logits.min() >= -1 and logits.max() <= 1
    with torch.no_grad():
        head.weight.mul_(7.0)
    torch.testing.assert_close(head(f / 100), logits)
    # a feature parallel to a class vector scores exactly 1 for that class
    assert head(head.weight.detach()[3:4] * 5)[0, 3].item() == pytest.approx(1.0, abs=1e-6)
    # init: unit-norm class vectors, as the LDAM reference's renorm init
    fresh = CosineHead(16, 10)
    np.testing.assert_allclose(np.linalg.norm(fresh.weight.detach().numpy(), axis=1), 1.0,
                               rtol=1e-6)


def test_build_head_errors_use_the_key():
    with pytest.raises(ConfigError, match=r"^phases\.1\.model\.head\.name: unknown head"):
        build_head("cos", 8, 4, key="phases.1.model.head")


# ------------------------------------------------------------------------------------- digits
def test_digits_cnn_learns_balanced_digits():
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    data = load_digits()
    x = (torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0 - 0.3) / 0.4
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    train, test = perm[:1400], perm[1400:]
    model = DigitsCNN(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        model.train()
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy > 0.9

