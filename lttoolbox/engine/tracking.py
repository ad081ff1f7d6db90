"""Experiment tracking with MLflow and Weights & Biases: ``train.loggers: [mlflow]`` / ``[wandb]``.

Both log the same content (the libraries do the work; the toolbox only decides what is sent):

* the resolved recipe, flattened to dotted keys (``train.batch_size``, ``augment.0.name``; each
  phase as its difference from the base recipe, as ``lttrain --print-config`` prints it): MLflow
  params / the W&B config; and ``recipe.yaml`` itself as an artifact;
* every epoch's scalars, the rows TensorBoard gets (:func:`lttoolbox.engine.loggers.epoch_scalars`:
  loss, each loss term, lr, images/s, the ``eval.every`` evaluation), at step = the run's epoch
  count across phases;
* at the end, the final scalars (``final/top1``, ...), and ``results.json`` with the plots as
  artifacts;
* tags: ``seed``, ``commit`` (the first one, as in ``results.json``; ``commits`` lists all when a
  resume ran other code), ``machine`` (host name) and ``device``.

Recipe (the defaults)::

    train:
      loggers: [mlflow, wandb]
      mlflow: {tracking_uri: null, experiment: lttoolbox, run_name: null}
      wandb: {project: lttoolbox, mode: offline, dir: null}

``train.mlflow.tracking_uri: null`` is the run's own store, ``sqlite:///<run>/mlflow.db`` with the
artifacts in ``<run>/mlartifacts`` (MLflow 3 puts its file store in maintenance mode and opens a
``file:`` URI only with ``MLFLOW_ALLOW_FILE_STORE=true``; its recommended local store is SQLite).
Any URI MLflow takes may be given instead (``http://host:5000``, a shared ``sqlite:///...``).
``run_name: null`` names the run after the run directory. ``train.wandb.mode: offline`` needs no
network and no account: the run is written under ``<dir>/wandb/offline-run-*`` (``dir: null`` is
the run directory) and uploaded later with ``wandb sync``; ``online`` logs as it trains.

Resume: the tracking run is recorded in ``<run>/tracking.json`` (its id, its store or project,
and how many epochs it holds), so ``lttrain --resume`` continues the same MLflow run and the same
W&B run id, logs the epochs the tracker missed (those trained after its last successful write)
and never an epoch twice (those trained again after a checkpoint older than the last log are
skipped). W&B 0.31 cannot reopen an *offline* run (wandb/wandb#4624): each attempt writes its own
``offline-run-*-<id>`` folder under the same id, the steps continuing where the last left off.
A tracking store that was changed in the recipe (another URI or project) gets a new run holding
every epoch.

A backend that fails while training is reported once and dropped for the rest of the attempt;
training goes on (:class:`lttoolbox.engine.loggers.Guarded`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..recipe import compact_recipe
from ..rundir import RunDir, atomic_write_json
from .logged_run import LoggedRun, epoch_scalars, final_scalars

DEFAULT_STORE = "default"  # tracking.json's name for the run's own MLflow store
WANDB_TAG_LENGTH = 64  # W&B refuses longer tags
MLFLOW_BATCH = 100  # MLflow takes at most 100 params per log_batch call
# The longest param value MLflow stores (mlflow/utils/validation.py, MAX_PARAM_VAL_LENGTH). MLflow
# 3 cuts a longer one itself unless MLFLOW_TRUNCATE_LONG_VALUES=false, and an older tracking
# server refuses it, failing every param: the toolbox cuts it first, ending in "..."
# (recipe.yaml, an artifact, holds it whole)
MLFLOW_PARAM_LENGTH = 6000


def flat_recipe(recipe: dict) -> dict[str, Any]:
    """The recipe as dotted keys: mappings and lists of mappings are walked into (a list by its
    index), every other value is kept as it is; phases as their difference from the base.

    Example:
        >>> flat_recipe({"train": {"epochs": 2, "freeze": []}, "augment": [{"name": "mixup"}]})
        {'train.epochs': 2, 'train.freeze': [], 'augment.0.name': 'mixup'}
    """
    out: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for name, child in value.items():
                walk(child, f"{key}.{name}" if key else str(name))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for index, child in enumerate(value):
                walk(child, f"{key}.{index}")
        else:
            out[key] = value

    walk(compact_recipe(recipe), "")
    return out


def as_text(value: Any, limit: int = MLFLOW_PARAM_LENGTH) -> str:
    """A recipe value as MLflow stores params: text as it is, anything else in JSON (``null``,
    ``true``, ``[60, 80]``), as a recipe would write it; cut to ``limit`` characters.

    Example:
        >>> as_text(None), as_text([60, 80]), as_text("x" * 10, limit=6)
        ('null', '[60, 80]', 'xxx...')
    """
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run_tags(run: LoggedRun) -> dict[str, str]:
    """``seed``, ``commit`` (and ``commits`` after a resume with other code), ``machine``,
    ``device``."""
    commits = [c or "unknown" for c in run.commits] or ["unknown"]
    tags = {"seed": str(run.recipe["train"]["seed"]), "commit": commits[0],
            "machine": str(run.machine.get("hostname", "unknown")),
            "device": " ".join(str(run.machine[k]) for k in ("device", "gpu")
                               if run.machine.get(k))}
    if len(commits) > 1:
        tags["commits"] = " ".join(commits)
    return tags


def end_artifacts(path: Path) -> list[Path]:
    """``results.json`` and the plots that were drawn."""
    run = RunDir(path)
    return [p for p in (run.results, *(run.path / name for name in RunDir.PLOTS)) if p.is_file()]


class _Tracked:
    """What both trackers share: ``tracking.json`` and the epoch count.

    ``self.step`` is the number of epochs trained so far, ``self.logged`` the number the tracker
    holds; an epoch is sent only when it is beyond ``logged``.
    """

    name = ""

    def __init__(self, run: LoggedRun):
        self.run_dir = RunDir(run.path)
        self.step = 0
        self.logged = 0
        self.finished = False

    def saved(self) -> dict:
        try:
            return json.loads(self.run_dir.tracking.read_text(encoding="utf-8")).get(self.name)
        except (OSError, ValueError, AttributeError):
            return {}

    def save(self, **entry: Any) -> None:
        try:
            state = json.loads(self.run_dir.tracking.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        state[self.name] = {**(state.get(self.name) or {}), **entry}
        atomic_write_json(state, self.run_dir.tracking)

    def catch_up(self, history: list) -> None:
        """Send the trained epochs the tracker does not hold yet."""
        for row in history:
            self.epoch(row)

    def epoch(self, row: dict) -> None:
        self.step += 1
        if self.step <= self.logged:  # trained again after an older checkpoint: already sent
            return
        self.send(epoch_scalars(row), self.step)
        self.logged = self.step
        self.save(epochs=self.logged)

    def send(self, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError


class MLflowLogger(_Tracked):
    """An MLflow run: params, metrics per epoch, artifacts (through ``MlflowClient``)."""

    name = "mlflow"

    def __init__(self, run: LoggedRun):
        super().__init__(run)
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        settings = run.recipe["train"]["mlflow"]
        store = settings["tracking_uri"] or DEFAULT_STORE
        uri = (settings["tracking_uri"]
               or f"sqlite:///{self.run_dir.mlflow_db.resolve().as_posix()}")
        self.client = client = MlflowClient(tracking_uri=uri)
        saved = self.saved() or {}
        self.run_id = None
        if saved.get("store") == store and saved.get("run_id"):
            try:
                client.get_run(saved["run_id"])
                self.run_id = saved["run_id"]
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        tags = run_tags(run)
        if self.run_id is None:  # a new run (the first attempt, or a store that was changed)
            experiment = client.get_experiment_by_name(settings["experiment"])
            experiment_id = (experiment.experiment_id if experiment else client.create_experiment(
                settings["experiment"],
                artifact_location=(self.run_dir.mlflow_artifacts.resolve().as_uri()
                                   if store == DEFAULT_STORE else None)))
            created = client.create_run(experiment_id, tags=tags,
                                        run_name=settings["run_name"]
                                        or self.run_dir.path.resolve().name)
            self.run_id = created.info.run_id
            self.save(store=store, run_id=self.run_id, epochs=0, recipe=False)
            saved = {}
        else:  # resumed: running again, under this attempt's commit and machine
            client.update_run(self.run_id, status="RUNNING")
            client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.logged = saved.get("epochs", 0)
        if not saved.get("recipe"):
            params = [Param(k, as_text(v)) for k, v in flat_recipe(run.recipe).items()]
            for start in range(0, len(params), MLFLOW_BATCH):
                client.log_batch(self.run_id, params=params[start:start + MLFLOW_BATCH])
            client.log_artifact(self.run_id, str(self.run_dir.recipe))
            self.save(recipe=True)
        self.catch_up(run.history)

    def send(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                    for k, v in scalars.items()])

    def results(self, results: dict) -> None:
        self.send(final_scalars(results), self.step)
        for path in end_artifacts(self.run_dir.path):
            self.client.log_artifact(self.run_id, str(path))
        self.finished = True

    def close(self) -> None:
        # An interrupted run is KILLED until a resume sets it RUNNING again.
        self.client.set_terminated(self.run_id, "FINISHED" if self.finished else "KILLED")


class WandbLogger(_Tracked):
    """A W&B run: config, history per epoch, summary and artifacts (through ``wandb.init``)."""

    name = "wandb"

    def __init__(self, run: LoggedRun):
        super().__init__(run)
        import wandb

        settings = run.recipe["train"]["wandb"]
        saved = self.saved() or {}
        same = saved.get("project") == settings["project"] and saved.get("id")
        directory = Path(settings["dir"]) if settings["dir"] else self.run_dir.path
        directory.mkdir(parents=True, exist_ok=True)
        online = settings["mode"] == "online"
        self.wandb = wandb.init(
            project=settings["project"], dir=str(directory), mode=settings["mode"],
            id=saved["id"] if same else None, name=self.run_dir.path.resolve().name,
            tags=[f"{k}:{v}"[:WANDB_TAG_LENGTH] for k, v in run_tags(run).items()],
            # offline runs cannot be resumed by W&B 0.31 (it warns and ignores the option)
            resume="allow" if online and same else None,
            # W&B's console capture would rewire this process's stdout and stderr
            settings=wandb.Settings(console="off"))
        if not same:
            saved = {}
            self.save(project=settings["project"], id=self.wandb.id, epochs=0, recipe=False)
        # every attempt's files hold the config (an offline attempt is a run folder of its own)
        self.wandb.config.update(flat_recipe(run.recipe), allow_val_change=True)
        self.logged = saved.get("epochs", 0)
        if not saved.get("recipe"):
            self._artifact("recipe", [self.run_dir.recipe])
            self.save(recipe=True)
        self.catch_up(run.history)

    def _artifact(self, kind: str, paths: list[Path]) -> None:
        import wandb

        artifact = wandb.Artifact(f"{kind}-{self.wandb.id}", type=kind)
        for path in paths:
            artifact.add_file(str(path))
        self.wandb.log_artifact(artifact)

    def send(self, scalars: dict[str, float], step: int) -> None:
        self.wandb.log(scalars, step=step)

    def results(self, results: dict) -> None:
        self.wandb.summary.update(final_scalars(results))
        self._artifact("results", end_artifacts(self.run_dir.path))
        self.finished = True

    def close(self) -> None:
        self.wandb.finish(exit_code=0 if self.finished else 1)
