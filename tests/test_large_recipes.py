"""The large-data recipes carry the protocols of the papers they cite.

Every YAML file under ``configs/imagenet_lt``, ``configs/inaturalist2018`` and
``configs/places_lt`` is loaded and resolved (no data is read, no model is built) and its protocol
numbers are compared with the tables below, written from the sources the recipes' headers name:

* RSG (Wang et al., CVPR 2021), ImageNet-LT: ``Imbalanced_Classification/imagenet_lt_train.py``
  and ``models/resnet.py`` at 3c50745 of github.com/Jianf-Wang/RSG;
* decoupling (Kang et al., ICLR 2020, Sec. 5.1): ``config/{ImageNet_LT,iNaturalist18,Places_LT}``
  at f162ade of github.com/facebookresearch/classifier-balancing;
* LDAM-DRW (Cao et al., NeurIPS 2019, arXiv:1906.07413v2, Appendix B), iNaturalist 2018;
* OLTR (Liu et al., CVPR 2019), Places-LT: ``config/Places_LT/stage_1.py`` at f50e375 of
  github.com/zhmiao/OpenLongTailRecognition-OLTR.

The learning-rate checks replay each reference's own rule epoch by epoch, so a milestone off by
one (the 0-based epochs of this toolbox against a script's ``epoch + 1``) fails here.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

# Only the recipe reader here: the table checks run without importing torch, which the
# parameter and learning-rate checks below import themselves.
from lttoolbox.recipe import load_recipe, phase_recipes, unreachable_epoch_keys

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("imagenet_lt", "inaturalist2018", "places_lt")
# Keys of the streaming data path (docs/data.md); accepted even where the data set's signature
# does not list them yet.
STREAM_KEYS = {"path", "color_jitter"}
IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
INAT_STATS = ([0.466, 0.471, 0.380], [0.195, 0.194, 0.192])  # classifier-balancing dataloader.py

# The data of each folder: (data set, classes, colour jitter, mean and std).
DATA = {
    "imagenet_lt": ("txt_list", 1000, 0.4, IMAGENET_STATS),
    "inaturalist2018": ("inaturalist", 8142, 0, INAT_STATS),
    "places_lt": ("txt_list", 365, 0.4, IMAGENET_STATS),
}

# Protocols: model, epochs, global batch, lr, weight decay, schedule, milestones, warm-up epochs.
RSG_IMAGENET = dict(model="resnext50_32x4d", epochs=100, batch=256, lr=0.1, wd=2e-4,
                    schedule="multistep", milestones=[59, 79, 94], warmup=5,
                    protocol="imagenet_lt-rsg")
KANG_IMAGENET = dict(model="resnext50_32x4d", epochs=90, batch=512, lr=0.2, wd=5e-4,
                     schedule="cosine", milestones=[], warmup=0,
                     protocol="imagenet_lt-decoupling")
KANG_INAT = dict(model="resnet50", epochs=90, batch=512, lr=0.2, wd=1e-4, schedule="cosine",
                 milestones=[], warmup=0, protocol="inaturalist2018-decoupling")
KANG_INAT_2X = {**KANG_INAT, "epochs": 200, "protocol": "inaturalist2018-decoupling-2x"}
LDAM_INAT = dict(model="resnet50", epochs=90, batch=256, lr=0.1, wd=1e-4, schedule="multistep",
                 milestones=[30, 60], warmup=0, protocol="inaturalist2018-ldam")
OLTR_PLACES = dict(model="resnet152", epochs=30, batch=128, lr=0.01, wd=5e-4,
                   schedule="multistep", milestones=[10, 20], warmup=0,
                   protocol="places_lt-oltr")

# The tricks: loss, head, sampler (name, start epoch), generator (point, first generating epoch).
CE = dict(loss={"name": "ce"}, head="linear", sampler=("instance", 0), generator=None)
LDAM_DRS_RSG_IMAGENET = dict(loss={"name": "ldam", "max_m": 0.3, "s": 30.0}, head="cosine",
                             sampler=("class_balanced", 80))
LDAM_DRW_IMAGENET = dict(loss={"name": "ldam", "max_m": 0.3, "s": 30.0,
                               "weights": {"name": "effective_number", "beta": 0.9999},
                               "weights_start_epoch": 80},
                         head="cosine", sampler=("instance", 0))
LDAM_DRW_INAT = dict(loss={"name": "ldam", "max_m": 0.3, "s": 30.0,
                           "weights": {"name": "effective_number", "beta": 0.9999},
                           "weights_start_epoch": 60},
                     head="cosine", sampler=("instance", 0), generator=None)
RSG_AT_LAYER3 = ("layer3", 80)

# Later phases: name, epochs, global batch, lr, weight decay, schedule, sampler, frozen, new head.
CRT_IMAGENET = ("crt", 10, 512, 0.2, 5e-4, "cosine", "class_balanced", ["backbone"], True)
LWS_IMAGENET = ("lws", 5, 512, 0.2, 5e-4, "cosine", "class_balanced", ["backbone"], False)
TAU_NORM = ("tau_norm", 0)
CRT_INAT = ("crt", 30, 512, 0.2, 1e-4, "cosine", "class_balanced", ["backbone"], True)
CRT_PLACES = ("crt", 10, 256, 0.1, 5e-4, "cosine", "class_balanced", ["backbone"], True)

EXPECTED = {
    "imagenet_lt/base.yaml": (RSG_IMAGENET, CE, []),
    "imagenet_lt/ce.yaml": (RSG_IMAGENET, CE, []),
    "imagenet_lt/ce_rsg.yaml": (RSG_IMAGENET, {**CE, "generator": RSG_AT_LAYER3}, []),
    "imagenet_lt/ldam_drs.yaml": (RSG_IMAGENET, {**LDAM_DRS_RSG_IMAGENET, "generator": None}, []),
    "imagenet_lt/ldam_drs_rsg.yaml": (RSG_IMAGENET,
                                      {**LDAM_DRS_RSG_IMAGENET, "generator": RSG_AT_LAYER3}, []),
    "imagenet_lt/ldam_drw.yaml": (RSG_IMAGENET, {**LDAM_DRW_IMAGENET, "generator": None}, []),
    "imagenet_lt/ldam_drw_rsg.yaml": (RSG_IMAGENET,
                                      {**LDAM_DRW_IMAGENET, "generator": RSG_AT_LAYER3}, []),
    "imagenet_lt/ce_e90.yaml": (KANG_IMAGENET, CE, []),
    "imagenet_lt/ce_crt.yaml": (KANG_IMAGENET, CE, [CRT_IMAGENET]),
    "imagenet_lt/ce_lws.yaml": (KANG_IMAGENET, CE, [LWS_IMAGENET]),
    "imagenet_lt/ce_tau_norm.yaml": (KANG_IMAGENET, CE, [TAU_NORM]),
    "inaturalist2018/base.yaml": (KANG_INAT, CE, []),
    "inaturalist2018/ce.yaml": (KANG_INAT, CE, []),
    "inaturalist2018/ce_2x.yaml": (KANG_INAT_2X, CE, []),
    "inaturalist2018/ce_crt.yaml": (KANG_INAT, CE, [CRT_INAT]),
    "inaturalist2018/ce_crt_2x.yaml": (KANG_INAT_2X, CE, [CRT_INAT]),
    "inaturalist2018/ldam_drw.yaml": (LDAM_INAT, LDAM_DRW_INAT, []),
    "places_lt/base.yaml": (OLTR_PLACES, CE, []),
    "places_lt/ce.yaml": (OLTR_PLACES, CE, []),
    "places_lt/ce_crt.yaml": (OLTR_PLACES, CE, [CRT_PLACES]),
}


def recipe_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT / "configs")) for folder in FOLDERS
                  for p in (ROOT / "configs" / folder).glob("*.yaml"))


def test_every_large_recipe_has_a_table_row():
    assert recipe_files() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_resolves_to_its_protocol(name):
    protocol, trick, later = EXPECTED[name]
    recipe = load_recipe(ROOT / "configs" / name)
    data, model, optim = recipe["data"], recipe["model"], recipe["optim"]
    dataset, classes, jitter, (mean, std) = DATA[name.split("/")[0]]
    assert (data["name"], data["num_classes"], data["image_size"]) == (dataset, classes, 224)
    assert (data["path"], data["color_jitter"]) == ("stream", jitter)
    assert (data["mean"], data["std"]) == (mean, std)
    assert model["name"] == protocol["model"]
    assert model.get("weights") == ("weights/resnet152-imagenet.pth"
                                    if name.startswith("places_lt/") else None)
    assert recipe["train"]["epochs"] == protocol["epochs"]
    assert recipe["train"]["batch_size"] == protocol["batch"]
    assert (optim["name"], optim["momentum"], optim["nesterov"]) == ("sgd", 0.9, False)
    assert optim["lr"] == pytest.approx(protocol["lr"])
    assert optim["weight_decay"] == pytest.approx(protocol["wd"])
    schedule = recipe["schedule"]
    assert schedule["name"] == protocol["schedule"]
    assert schedule["warmup_epochs"] == protocol["warmup"]
    if schedule["name"] == "multistep":
        assert (schedule["milestones"], schedule["gamma"]) == (protocol["milestones"], 0.1)
    else:
        assert (schedule["milestones"], schedule["min_lr"]) == ([], 0.0)

    assert recipe["loss"] == trick["loss"]
    assert model["head"] == trick["head"]
    sampler = recipe["sampler"]
    assert (sampler["name"], sampler.get("start_epoch", 0)) == trick["sampler"]
    generator = recipe["generator"]
    if trick["generator"] is None:
        assert generator is None
    else:
        point, start = trick["generator"]
        assert (generator["name"], generator["point"]) == ("rsg", point)
        assert generator["generation_start_epoch"] == start
        assert (generator["num_centers"], generator["contrastive_channels"]) == (15, 256)
        assert (generator["cesc_weight"], generator["mv_weight"]) == (0.1, 0.01)
        assert (generator["frequent_fraction"], generator["transfer_strength"]) == (0.2, 1.0)

    phases = phase_recipes(recipe)
    assert [s["meta"]["phase"] for s in phases] == (["joint", *(s[0] for s in later)]
                                                    if later else ["main"])
    for phase, row in zip(phases[1:], later):
        assert phase["train"]["epochs"] == row[1]
        if row[0] == "tau_norm":
            assert phase["model"]["head"] == {"name": "tau_norm", "tau": "auto"}
            continue
        _, _, batch, lr, wd, schedule_name, sampler_name, frozen, reset = row
        assert phase["train"]["batch_size"] == batch
        assert phase["optim"]["lr"] == pytest.approx(lr)
        assert phase["optim"]["weight_decay"] == pytest.approx(wd)
        assert (phase["schedule"]["name"], phase["schedule"]["warmup_epochs"]) == (
            schedule_name, 0)
        assert phase["sampler"]["name"] == sampler_name
        assert (phase["train"]["freeze"], phase["train"]["reset_head"]) == (frozen, reset)
        # cRT trains an nn.Linear with PyTorch's own initialisation, as both reference codes
        assert phase["model"]["head"] == ("lws" if row[0] == "lws"
                                          else {"name": "linear", "init": "pytorch"})

    assert recipe["meta"]["protocol"] == protocol["protocol"]
    assert recipe["meta"]["paper"]
    assert (recipe["eval"]["many_threshold"], recipe["eval"]["few_threshold"]) == (100, 20)
    assert unreachable_epoch_keys(recipe) == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_names_its_sources_and_only_known_parameters(name):
    text = (ROOT / "configs" / name).read_text()
    first = {"imagenet_lt": "# ImageNet-LT", "inaturalist2018": "# iNaturalist 2018",
             "places_lt": "# Places-LT"}[name.split("/")[0]]
    assert text.startswith(first), name
    from lttoolbox.registry import (DATASETS, GENERATORS, LOSSES, MODELS, SAMPLERS,
                                    accepted_parameters)
    for family in ("data", "generators", "losses", "models", "samplers"):  # registers them
        __import__(f"lttoolbox.{family}")
    recipe = load_recipe(ROOT / "configs" / name)
    for phase in phase_recipes(recipe):
        for section, registry, extra in (("data", DATASETS, STREAM_KEYS), ("model", MODELS, ()),
                                         ("sampler", SAMPLERS, ()), ("loss", LOSSES, ()),
                                         ("generator", GENERATORS, ())):
            cfg = phase[section]
            if cfg is None:
                continue
            # an entry's parameters with its base class's (**base): as the registry reads them
            params = accepted_parameters(registry.get(cfg["name"]))[0] | set(extra)
            assert set(cfg) - {"name"} <= params, (name, section, set(cfg) - {"name"} - params)


def rsg_imagenet_lr(epoch: int, lr: float = 0.1) -> float:
    """adjust_learning_rate of RSG's imagenet_lt_train.py (lines 318-330 at 3c50745)."""
    epoch += 1
    if epoch > 94:
        return lr * 0.001
    if epoch > 79:
        return lr * 0.01
    if epoch > 59:
        return lr * 0.1
    return lr * epoch / 5 if epoch <= 5 else lr


def step_lr(epoch: int, lr: float, step: int) -> float:
    """torch's StepLR stepped after each epoch (OLTR's run_networks.py, pytorch/examples)."""
    return lr * 0.1 ** (epoch // step)


def cosine_lr(epoch: int, lr: float, epochs: int) -> float:
    """CosineAnnealingLR(T_max=epochs, eta_min=0) stepped at the start of every epoch, before its
    batches, as classifier-balancing's run_networks.py (lines 159-160 and 247-255 at f162ade):
    the 0-based epoch e trains at the cosine of (e + 1) / epochs."""
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch + 1) / epochs))


@pytest.mark.parametrize("name, reference", [
    ("imagenet_lt/ce.yaml", lambda e: rsg_imagenet_lr(e)),
    ("imagenet_lt/ce_e90.yaml", lambda e: cosine_lr(e, 0.2, 90)),
    ("inaturalist2018/ce.yaml", lambda e: cosine_lr(e, 0.2, 90)),
    ("inaturalist2018/ce_2x.yaml", lambda e: cosine_lr(e, 0.2, 200)),
    ("inaturalist2018/ldam_drw.yaml", lambda e: step_lr(e, 0.1, 30)),
    ("places_lt/ce.yaml", lambda e: step_lr(e, 0.01, 10)),
])
def test_every_epoch_trains_at_the_reference_rate(name, reference):
    from lttoolbox.engine.optim import lr_at
    recipe = load_recipe(ROOT / "configs" / name)
    s, epochs = recipe["schedule"], recipe["train"]["epochs"]
    for epoch in range(epochs):
        ours = lr_at(epoch, recipe["optim"]["lr"], name=s["name"],
                     warmup_epochs=s["warmup_epochs"], milestones=s["milestones"],
                     gamma=s["gamma"], total_epochs=epochs, min_lr=s["min_lr"])
        assert ours == pytest.approx(reference(epoch), rel=1e-9), (name, epoch)
