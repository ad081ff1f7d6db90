"""The timm backbone (``model: {name: timm, arch: ...}``) with the real timm: points on timm's
feature stages, hooks, freezing and heads, local weights, CAM's refusal, and runs on the digits.

Two families, at the digits' 8x8 gray images: timm's own small test architectures
``test_resnet`` (a ResNet: ``act1``, ``layer1``..``layer4``) and ``test_vit`` (a vision
transformer, patch 2 here: 16 patches and a class token). Expected values come from timm itself by
another path (its ``features_only`` network, its own classifier, the blocks run one by one) or by
hand, never from the code under test.
"""
from __future__ import annotations

import copy
import io
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import digits
from lttoolbox.batch import Batch
from lttoolbox.errors import ConfigError
from lttoolbox.registry import MODELS

timm = pytest.importorskip("timm", reason='the [timm] extra is not installed: '
                                          'pip install -e ".[timm]"')

CNN = {"name": "timm", "arch": "test_resnet"}
VIT = {"name": "timm", "arch": "test_vit", "kwargs": {"patch_size": 2}}
CONTEXT = dict(num_classes=10, in_channels=1, image_size=8)


def build(cfg, seed=0, **more):
    torch.manual_seed(seed)
    return MODELS.build({**cfg, **more}, **CONTEXT)


def images(batch=4, seed=1):
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def labels(batch=4):
    return torch.arange(batch) % 10


def bn_stats(model):
    return [t.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


# ------------------------------------------------------------------------------------ points
def test_cnn_points_are_timms_feature_stages_with_their_values():
    model = build(CNN).eval()
    info = [e["module"] for e in model.net.feature_info]  # act1, layer1, ..., layer4
    assert model.point_names == ("input", *[f"stage{i + 1}" for i in range(len(info))],
                                 "features")
    # timm's own features_only network with the same weights gives every stage's output
    reference = timm.create_model("test_resnet", features_only=True, in_chans=1).eval()
    missing, _ = reference.load_state_dict(model.net.state_dict(), strict=False)
    assert not missing
    x = images()
    seen = {}

    def keep(point):
        def hook(h, batch):
            seen[point] = h
            return h, batch
        return hook

    with torch.no_grad():
        expected = reference(x)
        logits, _ = model.forward_hooked(Batch.plain(x, labels()),
                                         {p: keep(p) for p in model.point_names})
    assert len(expected) == len(info)
    for i, stage in enumerate(expected):
        torch.testing.assert_close(seen[f"stage{i + 1}"], stage, rtol=0, atol=0)
    # features: global average pooling of the last stage (timm's ResNet head, pre-logits)
    torch.testing.assert_close(seen["features"], expected[-1].mean(dim=(2, 3)))
    assert model.feature_maps == (model.point_names[-2],)
    assert model.feature_dim == expected[-1].shape[1]


def test_vit_points_are_the_patch_tokens_and_groups_of_blocks():
    model = build(VIT).eval()
    net = model.net
    depth, dim = len(net.blocks), net.embed_dim
    assert model.point_names == ("input", "patch_embed", "stage1", "stage2", "stage3", "stage4",
                                 "features")
    shapes = model.point_shapes(images(2))
    tokens = (8 // 2) ** 2  # patches of 2x2 pixels
    # (N, D) tokens, or (h, w, D) where timm keeps the grid (test_vit: dynamic image size)
    assert shapes["patch_embed"] in ((tokens, dim), (8 // 2, 8 // 2, dim))
    assert all(shapes[f"stage{k}"] == (tokens + 1, dim) for k in range(1, 5))  # + class token
    assert shapes["features"] == (dim,) and model.feature_maps == ()
    # the blocks run one by one: stage k ends after block k * depth / 4
    x = images()
    seen = {}
    with torch.no_grad():
        model.forward_hooked(Batch.plain(x, labels()),
                             {p: (lambda h, b, p=p: (seen.setdefault(p, h), b))
                              for p in model.point_names[1:-1]})
        t = net.norm_pre(net._pos_embed(net.patch_embed(x)))
        ends = {(k + 1) * depth // 4: f"stage{k + 1}" for k in range(4)}
        for i, block in enumerate(net.blocks, start=1):
            t = block(t)
            if i in ends:
                torch.testing.assert_close(seen[ends[i]], t, rtol=0, atol=0)
    assert set(ends.values()) == {"stage1", "stage2", "stage3", "stage4"}


@pytest.mark.parametrize("cfg, stages, modules", [
    (CNN, 3, ["layer2", "layer3", "layer4"]),  # a CNN: its last stages
    (VIT, 2, ["blocks.2", "blocks.5"]),  # test_vit's 6 blocks in 2 groups of 3
    (VIT, 6, [f"blocks.{i}" for i in range(6)]),  # one block per point
], ids=["cnn", "vit-2", "vit-6"])
def test_stages_chooses_the_points(cfg, stages, modules):
    model = build(cfg, stages=stages)
    assert len(model.net.feature_info) == (5 if cfg is CNN else 6)
    names = [f"stage{k + 1}" for k in range(stages)]
    assert model.point_names == ("input", *(["patch_embed"] if cfg is VIT else []), *names,
                                 "features")
    assert [model._stage_paths[n] for n in names] == modules


@pytest.mark.parametrize("cfg", [CNN, VIT], ids=["cnn", "vit"])
def test_the_linear_head_on_the_pre_logits_is_timms_own_classifier(cfg):
    """timm's network with its classifier, the same weights and the head's rows as ``fc``: the
    logits are timm's."""
    model = build(cfg).eval()
    kwargs = cfg.get("kwargs", {})
    img = {"img_size": 8} if "vit" in cfg["arch"] else {}
    full = timm.create_model(cfg["arch"], num_classes=10, in_chans=1, **img, **kwargs).eval()
    state = dict(model.net.state_dict())
    classifier = full.pretrained_cfg["classifier"]
    state[f"{classifier}.weight"] = model.head.weight.detach()
    state[f"{classifier}.bias"] = model.head.bias.detach()
    full.load_state_dict(state)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), full(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [CNN, VIT], ids=["cnn", "vit"])
def test_hooks_run_in_network_order_and_identity_hooks_change_nothing(cfg):
    model = build(cfg).eval()
    x = images()
    calls = []

    def spy(point):
        def hook(h, batch):
            assert batch.x is h
            calls.append(point)
            return h, batch
        return hook

    with torch.no_grad():
        expected = model(x)
        logits, _ = model.forward_hooked(Batch.plain(x, labels()),
                                         {p: spy(p) for p in reversed(model.point_names)})
    assert calls == list(model.point_names)
    assert torch.equal(logits, expected)
    with pytest.raises(ConfigError, match="stage1"):  # the error lists the points
        model.forward_hooked(Batch.plain(x, labels()), {"layer9": spy("layer9")})
    with pytest.raises(TypeError, match="stage2"):
        model.forward_hooked(Batch.plain(x, labels()), {"stage2": lambda h, b: h})
    # no hook stays behind on timm's modules
    assert all(not m._forward_hooks for m in model.net.modules())
    # a deep copy (an EMA of the weights) hooks its own modules
    twin = copy.deepcopy(model)
    with torch.no_grad():
        zero = {model.point_names[-2]: lambda h, b: (torch.zeros_like(h), b)}
        assert torch.equal(twin.forward_hooked(Batch.plain(x, labels()), zero)[0],
                           model.forward_hooked(Batch.plain(x, labels()), zero)[0])
        assert torch.equal(twin(x), expected)


def test_a_stage_hook_replaces_the_stage_output_inside_timms_forward():
    model = build(CNN).eval()
    net, x = model.net, images()
    with torch.no_grad():
        logits, out = model.forward_hooked(
            Batch.plain(x, labels()),
            {"stage3": lambda h, b: (torch.zeros_like(h), b.replace(y_b=labels().flip(0)))})
        # by hand: zeros after layer2 (stage3), then layer3, layer4, pooling and the head
        rest = net.layer4(net.layer3(torch.zeros_like(net.layer2(net.layer1(net.maxpool(
            net.act1(net.bn1(net.conv1(x)))))))))
        expected = model.head(rest.mean(dim=(2, 3)))
    torch.testing.assert_close(logits, expected)
    assert torch.equal(out.y_b, labels().flip(0))  # the hook's batch comes back


# ------------------------------------------------------------------------ freezing and heads
@pytest.mark.parametrize("freeze_bn_stats", [False, True])
def test_freezing_the_backbone_trains_the_head_only(freeze_bn_stats):
    model = build(CNN).freeze("backbone", freeze_bn_stats=freeze_bn_stats).train()
    assert model.frozen == model.point_names[1:]
    before = bn_stats(model)
    F.cross_entropy(model(images()), labels()).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == name.startswith("head."), name
    moved = [not torch.equal(a, b) for a, b in zip(before, bn_stats(model))]
    assert before and (not any(moved) if freeze_bn_stats else all(moved))
    assert all(m.training is not freeze_bn_stats for m in model.net.modules()
               if isinstance(m, torch.nn.BatchNorm2d))
    model.unfreeze()
    assert all(p.requires_grad for p in model.parameters()) and model.net.training


@pytest.mark.parametrize("cfg, point, frozen", [
    (CNN, "stage2", ("net.layer1.",)),  # maxpool and layer1 run from stage1 to stage2
    (VIT, "patch_embed", ("net.patch_embed.", "net.cls_token", "net.pos_embed")),
], ids=["cnn", "vit"])
def test_freezing_a_point_freezes_the_modules_that_end_there(cfg, point, frozen):
    model = build(cfg).freeze(point, freeze_bn_stats=True).train()
    for name, p in model.named_parameters():
        assert p.requires_grad is not name.startswith(frozen), name
    assert model.frozen == (point,) and model.fixed_statistics == (point,)
    assert all(not m.training for name, m in model.named_modules()
               if name.startswith(tuple(f.rstrip(".") for f in frozen)))


@pytest.mark.parametrize("cfg", [CNN, VIT], ids=["cnn", "vit"])
def test_heads_are_the_recipes_and_can_be_swapped(cfg):
    model = build(cfg, head={"name": "cosine", "scale": 2.0})
    assert type(model.head).__name__ == "CosineHead" and model(images()).shape == (4, 10)
    model.reset_head("linear")
    old = model.head
    tau = model.reset_head({"name": "tau_norm", "tau": 1.0})  # takes the linear head over
    assert torch.equal(tau.weight, old.weight.detach())


# ----------------------------------------------------------------------------------- weights
def _save(state, path):
    torch.save(state, path)
    return str(path)


def test_weights_round_trip_in_timm_and_safetensors_format(tmp_path):
    from safetensors.torch import save_file

    a = build(CNN, seed=1).eval()
    for path in (_save(a.net.state_dict(), tmp_path / "w.pth"),
                 str(tmp_path / "w.safetensors")):
        if path.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in a.net.state_dict().items()}, path)
        b = build(CNN, seed=2, weights=path).eval()
        assert b.weights_path == path
        with torch.no_grad():
            b.head.load_state_dict(a.head.state_dict())
            assert torch.equal(a(images()), b(images()))


def test_a_pretrained_timm_file_loads_without_its_classifier_and_adapts_rgb(tmp_path):
    """A 3-channel timm file with its own 7-class ``fc`` into a 1-channel, 10-class model: the
    classifier is left out and the first conv summed over RGB, as timm's pretrained loading."""
    from lttoolbox.models import load_timm_weights

    torch.manual_seed(3)
    rgb = timm.create_model("test_resnet", num_classes=7)
    model = build(CNN)
    skipped = load_timm_weights(model, _save(rgb.state_dict(), tmp_path / "rgb.pth"))
    assert skipped == ["fc.weight", "fc.bias"]
    first = rgb.pretrained_cfg["first_conv"] + ".weight"
    torch.testing.assert_close(model.net.state_dict()[first],
                               rgb.state_dict()[first].sum(dim=1, keepdim=True))
    for key, value in rgb.state_dict().items():
        if key != first and not key.startswith("fc."):
            assert torch.equal(model.net.state_dict()[key], value), key


def test_a_run_starts_from_weights_and_its_model_file_starts_another(tmp_path):
    """Run A trains one epoch; run B is built (as training builds it) from A's model file: the
    same network; with A's head its logits are A's."""
    from lttoolbox.engine import Trainer, train
    from lttoolbox.recipe import resolve
    from lttoolbox.runs import load_run

    recipe = digits(model=dict(CNN), train={"epochs": 1})
    train(resolve(recipe), tmp_path / "a", quiet=True)
    model_a, _ = load_run(tmp_path / "a")
    (file,) = (tmp_path / "a").glob("model-*.pt")  # the one phase's weights
    b = Trainer(resolve(digits(model=dict(CNN, weights=str(file)))), tmp_path / "b",
                quiet=True)
    assert not (tmp_path / "b").exists()  # built, nothing written
    model_b = b.model.eval()
    with torch.no_grad():
        model_b.head.load_state_dict(model_a.head.state_dict())
        x = images()
        assert torch.equal(model_a(x), model_b(x))


def test_weights_errors_are_one_line_naming_the_key_and_the_file(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(ConfigError) as err:
        build(CNN, weights=str(missing))
    text = str(err.value)
    assert text.startswith("model.weights") and str(missing) in text and "\n" not in text
    # another architecture's file: the counts and first names of both kinds of key
    other = _save(build(VIT).net.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ConfigError) as err:
        build(CNN, weights=other)
    text = str(err.value)
    assert text.startswith("model.weights") and other in text and "\n" not in text
    assert "missing key(s), first conv1" in text and "unexpected key(s), first " in text
    # a file of the right names with another shape
    two = _save(timm.create_model("test_resnet", num_classes=0, in_chans=2).state_dict(),
                tmp_path / "two.pth")
    with pytest.raises(ConfigError, match=r"model.weights: .* has shape \(\d+, 2, "):
        build(CNN, weights=two)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read weights file"):
        build(CNN, weights=str(bad))


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails
    with pytest.raises(ConfigError) as err:
        build(CNN)
    assert str(err.value) == ('model.name: the timm backbone needs the [timm] extra: '
                              'pip install -e ".[timm]"')


@pytest.mark.parametrize("cfg, match", [
    ({"arch": "test_resnett"}, "model.arch: .*did you mean test_resnet"),
    ({"arch": "test_resnet", "kwargs": {"pretrained": True}},
     "model.kwargs.pretrained: is set by the toolbox: nothing is downloaded"),
    ({"arch": "test_resnet", "kwargs": {"num_classes": 5}}, "model.kwargs.num_classes"),
    ({"arch": "test_resnet", "kwargs": {"bogus": 1}}, "model.arch: timm cannot build"),
    ({"arch": "test_vit"}, r"model.arch: timm's test_vit cannot run on 1-channel 8x8 images "
                           r"\(AssertionError: .*patch size"),
    ({"arch": "test_resnet", "stages": 9}, "model.stages: must be an integer from 1 to 5"),
])
def test_bad_recipes_are_refused_in_one_line(cfg, match):
    with pytest.raises(ConfigError, match=match) as err:
        build({"name": "timm", **cfg})
    assert "\n" not in str(err.value)


def test_lttrain_list_shows_the_entry():
    from rich.console import Console

    from lttoolbox.cli import list_registries

    out = io.StringIO()
    list_registries(Console(file=out, width=400), "model")
    line = next(line for line in out.getvalue().splitlines() if line.strip().startswith("timm("))
    assert "arch" in line and "weights=None" in line and "kwargs=None" in line


# ------------------------------------------------------------------- components on the model
def test_a_generator_at_features_extends_the_batch():
    from lttoolbox.api import Context
    from lttoolbox.generators import Hallucinator

    model = build(VIT).train()
    counts = [50] * 5 + [5] * 5
    gen = Hallucinator(context=Context.from_counts(
        counts, point_names=model.point_names, point_shapes=model.point_shapes(images(2))),
        point="features", start_epoch=0)
    y = torch.tensor([0, 1, 7, 8])
    logits, batch = model.forward_hooked(Batch.plain(images(), y), {"features": gen})
    assert gen.feature_shape == (model.feature_dim, 1, 1)
    assert gen.last_generated > 0 and logits.shape == (4 + gen.last_generated, 10)
    assert batch.y_a[4:].tolist() and set(batch.y_a[4:].tolist()) <= {7, 8}


def test_cam_reads_a_resnets_last_stage_and_refuses_a_vit():
    from lttoolbox.api import Context
    from lttoolbox.augment import CAMResample

    cnn, vit = MODELS.build(CNN, **dict(CONTEXT, num_classes=2)), build(VIT)
    aug = CAMResample(target=10, context=Context(point_names=cnn.point_names,
                                                 feature_maps=cnn.feature_maps))
    assert aug.feature_point == "stage5"
    out = aug.prepare(cnn, torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8),
                      torch.tensor([0, 0, 0, 0, 1, 1]), transform=lambda x: x.float() / 255,
                      phase_index=1)
    assert out["labels"].tolist() == [0] * 6 + [1] * 8
    with pytest.raises(ConfigError, match="has none .*vision transformer"):
        CAMResample(context=Context(point_names=vit.point_names, feature_maps=vit.feature_maps))


def test_convnext_normalises_after_pooling_so_it_has_no_feature_map():
    model = MODELS.build({"name": "timm", "arch": "test_convnext"}, num_classes=3,
                         in_channels=3, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    with torch.no_grad():
        model.forward_hooked(Batch.plain(x, torch.zeros(2, dtype=torch.long)),
                             {"stage4": lambda h, b: (seen.setdefault("map", h), b),
                              "features": lambda h, b: (seen.setdefault("f", h), b)})
    assert not torch.allclose(seen["map"].mean(dim=(2, 3)), seen["f"], atol=1e-3)  # LayerNorm
    assert model.feature_maps == ()


# -------------------------------------------------------------------------------- end to end
@pytest.mark.long  # two phases; README's command leaves it out, .ci/run runs it
def test_cnn_run_with_manifold_mixup_then_crt(tmp_path):
    from lttoolbox.engine import train
    from lttoolbox.recipe import resolve

    recipe = digits(model=dict(CNN), train={"epochs": 1},
                    augment=[{"name": "manifold_mixup", "point": "stage2"}])
    recipe["phases"] = [{"name": "joint"},
                        {"name": "crt", "augment": [], "sampler": {"name": "class_balanced"},
                         "train": {"epochs": 1, "freeze": ["backbone"], "reset_head": True}}]
    results = train(resolve(recipe), tmp_path / "run", quiet=True)
    assert 0 <= results["top1"] <= 100 and results["epochs"] == 2
    joint = torch.load(tmp_path / "run" / "model-joint.pt")
    crt = torch.load(tmp_path / "run" / "model-crt.pt")
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    assert all(torch.equal(crt[k], v) for k, v in joint.items()
               if k.startswith("net.") and not k.endswith(statistics))
    assert not torch.equal(crt["head.weight"], joint["head.weight"])


def test_vit_run_with_a_generator_at_features_and_cam_refused(tmp_path):
    from lttoolbox.engine import train
    from lttoolbox.recipe import resolve

    recipe = digits(model=dict(VIT), train={"epochs": 1},
                    generator={"name": "hallucinator", "point": "features"})
    results = train(resolve(recipe), tmp_path / "run", quiet=True)
    assert 0 <= results["top1"] <= 100 and results["epochs"] == 1
    cam = digits(model=dict(VIT), train={"epochs": 1})
    cam["phases"] = [{"name": "joint"},
                     {"name": "cam", "augment": [{"name": "cam_resample"}]}]
    with pytest.raises(ConfigError, match="cam_resample reads class activation maps"):
        train(resolve(cam), tmp_path / "cam", quiet=True)
    assert not (tmp_path / "cam").exists()
