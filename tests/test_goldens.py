"""Engine goldens: representative runs whose full results must stay bit-identical across
restructurings of the engine.

Each golden is a shipped recipe shrunk to a few epochs (``lttoolbox.recipe.scale_epochs``, as
``lttrain --epochs 3``) on the embedded digits data or on a small slice of CIFAR-10-LT, trained
with one thread. What is kept: top-1, the per-class accuracies, the confusion matrix, every
epoch's loss, loss terms and learning rate (exact floats), and a SHA-256 of the final weights.

Floating-point results depend on the processor and torch's kernels (an AMD EPYC and an Intel Xeon,
both AVX512 with the same torch, give losses that differ in the last bits and, after three epochs, a
few different top-1s), so each set of goldens holds on the machine and torch version it was recorded
with, stored in it: one file per machine, ``goldens/engine-<machine>.json``. The test uses the file
of this machine and skips on a machine that has none, naming the recorded ones. ``--record`` writes
this machine's file. Record them again only for a change that is meant to change results, and say so
in its commit: such a change needs every machine's file recorded anew (a file that cannot be is
deleted, not left stale):

    python tests/test_goldens.py --record
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = Path(__file__).resolve().parent / "goldens"
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpg"

#: The recipes, covering every family: data, model, sampler (instance, class-balanced, deferred,
#: progressive, CMO-weighted), loss (CE, LDAM, weights deferred), head (linear, cosine,
#: tau-norm, LWS), augmentation (input, manifold, CMO, CAM), generator (RSG, Delta-encoder) and
#: multi-phase schedules (cRT, CAM-DRS, mixup then fine-tune, tau-norm's 0-epoch phase).
DIGITS_RECIPES = ("quickstart", "cifar10_lt/ce_drw", "cifar10_lt/ldam_drw",
                  "cifar10_lt/cmo_ldam_drw", "cifar10_lt/ce_crt", "cifar10_lt/cam_drs",
                  "cifar10_lt/ce_rsg", "cifar10_lt/mixup_finetune", "cifar10_lt/ce_tau_norm",
                  "cifar10_lt/ce_lws", "cifar10_lt/manifold_mixup", "cifar10_lt/ce_delta_encoder",
                  "cifar10_lt/drs_progressive")
CIFAR_RECIPES = ("cifar10_lt/ldam_drw", "cifar10_lt/cmo_ldam_drw", "cifar10_lt/ce_crt",
                 "cifar10_lt/cam_drs", "cifar10_lt/ce_rsg", "cifar10_lt/mixup_finetune")
EPOCHS = 3


def overrides(name: str, variant: str) -> list[str]:
    from lttoolbox.recipe import read_recipe
    if variant == "digits":
        val = (read_recipe(ROOT / "configs" / f"{name}.yaml").get("data") or {}).get(
            "val_per_class")
        data = "{name: digits_lt, imbalance_ratio: 10" + (", val_per_class: 5" if val else "") + "}"
        return [f"data={data}", "model.name=digits_cnn", "train.batch_size=64",
                "eval.many_threshold=60", "eval.few_threshold=25"]
    return [f"data.root={CIFAR}", "data.max_per_class=100", "data.test_max_per_class=10",
            "train.batch_size=64"]


def cases() -> list[tuple[str, str]]:
    return ([(n, "digits") for n in DIGITS_RECIPES] + [(n, "cifar") for n in CIFAR_RECIPES])


def machine() -> dict:
    import platform
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": model, "capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__.split("+")[0]}


def weights_digest(path: Path) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run(name: str, variant: str, out: Path) -> dict:
    from lttoolbox.engine import train
    from lttoolbox.recipe import load_recipe, resolve, scale_epochs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same reductions whatever the core count
    try:
        recipe = resolve(scale_epochs(load_recipe(ROOT / "configs" / f"{name}.yaml",
                                                  overrides(name, variant)), EPOCHS))
        results = train(recipe, out, quiet=True)
    finally:
        torch.set_num_threads(threads)
    last = results["phases"][-1]["name"]
    return {"top1": results["top1"], "per_class_acc": results["per_class_acc"],
            "confusion_matrix": results["confusion_matrix"],
            "epochs": [(r["phase"], r["epoch"], r["loss"], r["lr"], r.get("loss_terms"))
                       for r in results["history"]],
            "weights": weights_digest(out / f"model-{last}.pt")}


def machine_file(here: dict) -> Path:
    """Where this machine's goldens live: its processor, instruction set and torch, as a name."""
    slug = re.sub(r"[^a-z0-9.]+", "-", f"{here['cpu']} {here['capability']} torch{here['torch']}"
                  .lower()).strip("-")
    return GOLDENS / f"engine-{slug}.json"


def load(here: dict) -> dict | None:
    """The goldens recorded on ``here``, or None."""
    path = machine_file(here)
    if not path.is_file():
        return None
    goldens = json.loads(path.read_text())
    assert goldens["machine"] == here, f"{path.name} holds the goldens of {goldens['machine']}"
    return goldens


@pytest.mark.long
@pytest.mark.parametrize("name,variant", cases(), ids=[f"{v}-{n}" for n, v in cases()])
def test_engine_results_are_bit_identical_to_the_goldens(name, variant, tmp_path):
    here = machine()
    goldens = load(here)
    if goldens is None:
        recorded = [json.loads(p.read_text())["machine"] for p in
                    sorted(GOLDENS.glob("engine-*.json"))]
        pytest.skip(f"no goldens recorded on {here}; recorded on: {recorded}")
    if variant == "cifar" and not CIFAR.is_dir():
        pytest.skip(f"CIFAR-10 JPEG copy not found at {CIFAR}")
    got = json.loads(json.dumps(run(name, variant, tmp_path / "run")))
    assert got == goldens["runs"][f"{variant}/{name}"]


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile
    sys.path.insert(0, str(ROOT))
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, variant in cases():
            runs[f"{variant}/{name}"] = run(name, variant, Path(tmp) / variant / name)
            print(f"{variant}/{name}: top-1 {runs[f'{variant}/{name}']['top1']:.2f}", flush=True)
    GOLDENS.mkdir(exist_ok=True)
    path = machine_file(machine())
    path.write_text(json.dumps({"machine": machine(), "epochs": EPOCHS, "runs": runs},
                               indent=1) + "\n")
    print(f"wrote {path}")
