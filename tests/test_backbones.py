"""Tests of the ImageNet-scale backbones (resnet10, resnet50, resnet152, resnext50_32x4d): the
named-point contract, and loading local torchvision weights checked against torchvision itself.

Inputs are 64x64 (the networks are size-agnostic) and each model is built once where possible,
so the file stays cheap on a CPU; the expected shapes are worked out from the architectures.
"""

import pytest
import torch
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet

import lttoolbox.models as models_pkg
from lttoolbox.batch import Batch
from lttoolbox.errors import ConfigError
from lttoolbox.models import CosineHead, ImageNetResNet, LTModel, load_torchvision_weights
from lttoolbox.registry import MODELS
from conftest import PerEntry

POINTS = ("input", "stem", "layer1", "layer2", "layer3", "layer4", "features")
NUM_CLASSES = 7
SIDE = 64
# Output channels of layer1..layer4: 64 * 2^i, times 4 for Bottleneck blocks; one row per
# registered ImageNet backbone.
EXPANSION = PerEntry(MODELS, {"resnet10": 1, "resnet50": 4, "resnet152": 4, "resnext50_32x4d": 4},
                     where="EXPANSION in tests/test_backbones.py",
                     select=lambda cls: issubclass(cls, ImageNetResNet))
NAMES = EXPANSION.names

_built: dict = {}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a loaded machine two threads wait on each other and a 64 px
    forward of ResNet-152 takes seconds instead of a tenth of one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    _built.clear()  # ResNet-152 alone holds 240 MB; give it back to the rest of the session


def batch_size(name):
    return 1 if name == "resnet152" else 2


def images(name, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size(name), 3, SIDE, SIDE, generator=g)


def build(name, **cfg):
    torch.manual_seed(0)
    return MODELS.build({"name": name, **cfg}, num_classes=NUM_CLASSES, in_channels=3,
                        image_size=SIDE)


def shared(name):
    """One model per name for the tests that leave it as they found it (eval mode)."""
    if name not in _built:
        _built[name] = build(name).eval()
    return _built[name]


def expected_shapes(name):
    c = [64 * 2 ** i * EXPANSION[name] for i in range(4)]
    # conv1 (stride 2) and max pooling (stride 2) take 64 px to 16; layer2..4 halve it again
    return {"input": (3, SIDE, SIDE), "stem": (64, 16, 16), "layer1": (c[0], 16, 16),
            "layer2": (c[1], 8, 8), "layer3": (c[2], 4, 4), "layer4": (c[3], 2, 2),
            "features": (c[3],)}


def torchvision_model(name):
    """The reference network, straight from torchvision (ResNet-10 from its ResNet class)."""
    if name == "resnet10":
        return ResNet(BasicBlock, [1, 1, 1, 1])
    return getattr(torchvision.models, name)(weights=None)


def perturbed_state(net, seed):
    """``net``'s state dict with every tensor randomised, BatchNorm statistics and affine
    parameters included (their fresh values, 0 and 1, would match any fresh model)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(123)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=g) * 0.05
    return state


def test_every_imagenet_backbone_has_its_expansion():
    assert {"resnet10", "resnet50"} <= set(NAMES)
    EXPANSION.check()


# ---------------------------------------------------------------------------- point contract
@pytest.mark.parametrize("name", NAMES)
def test_points_and_shapes(name):
    model = shared(name)
    cls = MODELS.get(name)
    assert isinstance(model, LTModel) and type(model) is cls
    assert getattr(models_pkg, cls.__name__) is cls
    assert model.point_names == POINTS
    assert model.point_shapes(images(name)) == expected_shapes(name)
    assert model.feature_dim == expected_shapes(name)["features"][0]
    assert not model.training  # point_shapes restores the mode it found


@pytest.mark.parametrize("name", NAMES)
def test_logits_and_features(name):
    model = shared(name)
    x = images(name)
    with torch.no_grad():
        assert model(x).shape == (batch_size(name), NUM_CLASSES)
        assert model.forward_features(x).shape == (batch_size(name), model.feature_dim)
    assert model.head.weight.shape == (NUM_CLASSES, model.feature_dim)


@pytest.mark.parametrize("name", NAMES)
def test_forward_hooked_at_layer3(name):
    model = shared(name)
    x = images(name)
    seen = {}

    def spy(h, batch):
        assert batch.x is h
        seen["shape"] = tuple(h.shape)
        return h, batch.replace(lam=torch.full((h.shape[0],), 0.5))

    with torch.no_grad():
        logits, out = model.forward_hooked(Batch.plain(x, torch.zeros(len(x), dtype=torch.long)),
                                           {"layer3": spy})
        plain = model(x)
        zeroed, _ = model.forward_hooked(Batch.plain(x, torch.zeros(len(x), dtype=torch.long)),
                                         {"layer3": lambda h, b: (torch.zeros_like(h), b)})
    assert seen["shape"] == (len(x),) + expected_shapes(name)["layer3"]
    assert torch.equal(logits, plain)
    assert torch.equal(out.lam, torch.full((len(x),), 0.5))  # the hook's batch comes back
    assert not torch.allclose(zeroed, plain)  # what the hook returns goes on through layer4


@pytest.mark.parametrize("name", NAMES)
def test_freeze_backbone_leaves_only_the_head(name):
    model = shared(name)
    try:
        model.freeze(["backbone"]).train()
        trainable = [k for k, p in model.named_parameters() if p.requires_grad]
        assert trainable == ["head.weight", "head.bias"]
        assert model.frozen == POINTS[1:]
        # the statistics are re-estimated by default, fixed on request
        assert all(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        model.freeze(["backbone"], freeze_bn_stats=True).train()
        assert all(not m.training for m in model.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))
    finally:
        model.unfreeze().eval()
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_cosine_head_builds(name):
    model = build(name, head="cosine").eval()
    assert isinstance(model.head, CosineHead)
    with torch.no_grad():
        logits = model(images(name))
    assert logits.shape == (batch_size(name), NUM_CLASSES) and logits.abs().max() <= 1 + 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_and_autocast(name):
    model = shared(name)
    x = images(name)
    try:
        with torch.no_grad():
            expected = model(x)
            model.to(memory_format=torch.channels_last)
            last = model(x.contiguous(memory_format=torch.channels_last))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = model(x.contiguous(memory_format=torch.channels_last))
    finally:
        model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(last, expected, rtol=1e-4, atol=1e-4)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()


# ----------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("name", NAMES)
def test_weights_match_torchvision(name, tmp_path):
    torch.manual_seed(1)
    ref = torchvision_model(name)
    ref.load_state_dict(perturbed_state(ref, seed=2))
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)

    model = MODELS.build({"name": name, "weights": str(path)}, num_classes=NUM_CLASSES)
    ours = model.state_dict()
    for key, value in ref.state_dict().items():
        if key.startswith("fc."):
            continue
        mine = ours["stem." + key] if key.startswith(("conv1.", "bn1.")) else ours[key]
        assert torch.equal(mine, value), key
    assert model.weights_path == str(path)
    assert model.head.weight.shape == (NUM_CLASSES, model.feature_dim)  # fc was not loaded

    ref.fc = torch.nn.Identity()
    ref.eval(), model.eval()
    x = images(name, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def resnet10_state():
    torch.manual_seed(4)
    return perturbed_state(torchvision_model("resnet10"), seed=5)


def load10(path, **cfg):
    return MODELS.build({"name": "resnet10", "weights": str(path), **cfg},
                        num_classes=NUM_CLASSES)


def test_fc_is_reported_and_checkpoint_wrappers_load(resnet10_state, tmp_path):
    model = build("resnet10")
    path = tmp_path / "plain.pth"
    torch.save(resnet10_state, path)
    assert load_torchvision_weights(model, path) == ["fc.weight", "fc.bias"]
    expected = model.state_dict()
    # a training checkpoint around the state dict, with DataParallel's "module." prefix, and
    # without num_batches_tracked (older files): the same backbone
    trimmed = {f"module.{k}": v for k, v in resnet10_state.items()
               if not k.endswith("num_batches_tracked")}
    for i, wrapped in enumerate([{"state_dict": resnet10_state, "epoch": 90},
                                 {"model": resnet10_state}, trimmed]):
        torch.save(wrapped, tmp_path / f"w{i}.pth")
        got = load10(tmp_path / f"w{i}.pth").state_dict()
        for key, value in expected.items():
            if not key.startswith("head.") and not key.endswith("num_batches_tracked"):
                assert torch.equal(got[key], value), (i, key)


def test_a_run_of_this_toolbox_can_seed_another(tmp_path):
    trained = build("resnet10")
    path = tmp_path / "model-main.pt"  # what the trainer writes: our names, a 7-class head
    torch.save(trained.state_dict(), path)
    model = MODELS.build({"name": "resnet10", "weights": str(path)}, num_classes=3)
    for key, value in trained.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(model.state_dict()[key], value), key
    assert model.head.weight.shape == (3, 512)


def bad_file(tmp_path, resnet10_state, kind):
    path = tmp_path / f"{kind}.pth"
    state = dict(resnet10_state)
    if kind == "missing":
        return path
    if kind == "key_removed":
        del state["layer2.0.conv1.weight"]
    elif kind == "key_added":
        state["layer5.0.conv1.weight"] = torch.zeros(1)
    elif kind == "wrong_shape":
        state["layer3.0.bn1.weight"] = torch.zeros(3)
    elif kind == "not_a_dict":
        state = torch.zeros(3)
    elif kind == "not_tensors":
        state = {"lr": 0.1, "epoch": 3}
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("kind, detail", [
    ("missing", "does not exist"),
    ("key_removed", "first layer2.0.conv1.weight"),
    ("key_added", "first layer5.0.conv1.weight"),
    ("wrong_shape", "layer3.0.bn1.weight has shape (3,) in the file, (256,) in the model"),
    ("not_a_dict", "holds a Tensor, not a state dict"),
    ("not_tensors", "not a state dict"),
    ("garbage", "cannot read"),
])
def test_bad_weights_file(resnet10_state, tmp_path, kind, detail):
    path = bad_file(tmp_path, resnet10_state, kind)
    with pytest.raises(ConfigError) as err:
        load10(path)
    message = str(err.value)
    assert message.startswith("model.weights: ") and str(path) in message and detail in message
    assert "\n" not in message


def test_in_channels_and_zero_init_residual(resnet10_state, tmp_path):
    torch.manual_seed(0)
    gray = MODELS.build({"name": "resnet10"}, num_classes=NUM_CLASSES, in_channels=1,
                        image_size=SIDE)
    assert gray.stem.conv1.weight.shape == (64, 1, 7, 7)
    assert gray(torch.randn(2, 1, SIDE, SIDE)).shape == (2, NUM_CLASSES)
    path = tmp_path / "rgb.pth"
    torch.save(resnet10_state, path)
    with pytest.raises(ConfigError, match=r"in_channels=1.*conv1\.weight has shape"):
        load10(path, in_channels=1)
    zero = build("resnet10", zero_init_residual=True)
    assert all(block.bn2.weight.abs().sum() == 0
               for layer in ("layer1", "layer2", "layer3", "layer4")
               for block in getattr(zero, layer))


def test_bad_parameters():
    with pytest.raises(ConfigError, match="image_size"):
        MODELS.build({"name": "resnet50"}, num_classes=NUM_CLASSES, image_size=16)
    with pytest.raises(ConfigError, match="model.zero_init_residual"):
        build("resnet10", zero_init_residual="yes")
    with pytest.raises(ConfigError, match="model.weights: must be a path"):
        build("resnet10", weights=3)


def test_a_finished_run_opens_without_its_pretrained_file(tmp_path, resnet10_state):
    """lteval / ltpredict rebuild the model from the run's own weights: the pretrained file the
    run started from may be gone."""
    import numpy as np
    from PIL import Image

    from lttoolbox.engine import train
    from lttoolbox.recipe import resolve
    from lttoolbox.runs import open_run

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for name in ("a", "b"):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "tree" / split / name / f"{i}.png")
    weights = tmp_path / "resnet10.pt"
    torch.save(resnet10_state, weights)
    recipe = resolve({"data": {"name": "image_folder", "root": str(tmp_path / "tree"),
                               "imbalance_type": None, "cache_dir": str(tmp_path / "cache")},
                      "model": {"name": "resnet10", "weights": str(weights)},
                      "train": {"epochs": 1, "batch_size": 4},
                      "eval": {"many_threshold": 3, "few_threshold": 1}})
    train(recipe, tmp_path / "run", quiet=True)
    weights.unlink()
    run = open_run(tmp_path / "run")
    x = run.eval_transform(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert run.model(x).shape == (2, 2)
