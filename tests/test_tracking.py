"""MLflow and W&B tracking (``train.loggers: [mlflow, wandb]``), read back with the libraries.

MLflow is read back through ``mlflow.tracking.MlflowClient`` (params, metric histories, tags,
artifacts). W&B 0.31 writes an offline run only as its transaction log
(``offline-run-*/run-<id>.wandb``; no ``wandb-summary.json``, and the Python ``DataStore`` reader
of earlier releases is gone): :func:`wandb_records` reads that log (LevelDB's log format,
https://github.com/google/leveldb/blob/main/doc/log_format.md, behind W&B's 7-byte header, each
chunk's CRC-32 checked) and decodes every record with W&B's own protobuf schema
(``wandb.proto.wandb_internal_pb2.Record``), the schema ``wandb sync`` uploads from.

Neither library touches the network or the home directory here: ``HOME``, the W&B folders and
``MLFLOW_TRACKING_URI`` point into the test's temporary folder, W&B runs offline and MLflow's
telemetry is off; a test checks that the temporary home stays empty.
"""
from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import pytest

from conftest import StopAfter, digits, write_recipe
from lttoolbox.cli import main as lttrain
from lttoolbox.engine import train
from lttoolbox.engine.loggers import LOGGERS, epoch_scalars
from lttoolbox.rundir import RunDir

mlflow = pytest.importorskip("mlflow", reason="the [mlflow] extra is not installed")
wandb = pytest.importorskip("wandb", reason="the [wandb] extra is not installed")

# two epochs, evaluated after the first (eval.every), so a row holds evaluation scalars
RECIPE = digits(train={"epochs": 2, "loggers": ["mlflow", "wandb"]}, eval={"every": 1})


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No network, and nothing of MLflow's or W&B's written outside ``tmp_path``."""
    # matplotlib (the run's plots) is imported before HOME moves, so this process reads its
    # usual font cache; a process started here (a DDP rank) builds one under MPLCONFIGDIR
    try:
        import matplotlib.font_manager  # noqa: F401
    except ImportError:
        pass
    home = tmp_path / "home"
    home.mkdir()
    for name, value in {"HOME": home, "MPLCONFIGDIR": tmp_path / "mpl",
                        "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                        "WANDB_DIR": tmp_path / "wandb-dir", "WANDB_CACHE_DIR": tmp_path / "wc",
                        "WANDB_CONFIG_DIR": tmp_path / "wcfg", "WANDB_DATA_DIR": tmp_path / "wd",
                        "WANDB_ARTIFACT_DIR": tmp_path / "wa",
                        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/unused.db",
                        "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        monkeypatch.setenv(name, str(value))
    yield
    assert not any(home.iterdir()), f"written to the home directory: {list(home.rglob('*'))}"
    assert not (tmp_path / "unused.db").exists()  # the recipe's store, not the environment's


# ------------------------------------------------------------------------------ reading back
def wandb_records(path: Path):
    """The records of a W&B transaction log, decoded with W&B's protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    block, header = 32768, 7
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:header])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    pos, pending = header, b""
    while pos + header <= len(data):
        left = block - pos % block
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        if left < header or (kind, length) == (0, 0):  # a block's zero-filled tail
            pos += left
            continue
        chunk = data[pos + header:pos + header + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"bad chunk at {pos}"
        pos += header + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full, first / middle, last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_run(folder: Path) -> dict:
    """What an offline run folder holds: id, tags, config, history rows, summary, artifacts."""
    logs = list(folder.glob("run-*.wandb"))
    assert len(logs) == 1, logs
    out = {"config": {}, "history": [], "summary": {}, "artifacts": {}}

    def key(item):
        return item.key or "/".join(item.nested_key)

    for record in wandb_records(logs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["id"], out["tags"] = record.run.run_id, list(record.run.tags)
        elif kind == "config":
            out["config"].update({key(u): json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            row = {key(i): json.loads(i.value_json) for i in record.history.item}
            out["history"].append({k: v for k, v in row.items() if not k.startswith("_")}
                                  | {"_step": row["_step"]})
        elif kind == "summary":
            out["summary"].update({key(u): json.loads(u.value_json)
                                   for u in record.summary.update})
        elif kind == "artifact":
            out["artifacts"][record.artifact.type] = {
                c.path: c.digest for c in record.artifact.manifest.contents}
    return out


def wandb_folders(run: Path) -> list[Path]:
    return sorted((run / "wandb").glob("offline-run-*"))


def mlflow_run(run: Path, uri: str | None = None):
    """The client of the run's MLflow store (its own by default) and the run logged there."""
    from mlflow.tracking import MlflowClient

    state = json.loads(RunDir(run).tracking.read_text())["mlflow"]
    client = MlflowClient(uri or f"sqlite:///{RunDir(run).mlflow_db}")
    return client, client.get_run(state["run_id"])


def md5_base64(path: Path) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def expected_rows(results: dict) -> list[dict]:
    """Each epoch's scalars as log.jsonl has them, at steps 1, 2, ..."""
    return [epoch_scalars(row) for row in results["history"]]


# ------------------------------------------------------------------------------------ tests
def test_both_trackers_hold_the_recipe_every_epoch_and_the_results(tmp_path):
    out = tmp_path / "run"
    results = train(RECIPE, out, quiet=True)
    rows = expected_rows(results)
    assert any("main/eval/top1" in r for r in rows)  # the eval.every evaluation is logged
    final = {f"final/{k}": results[k] for k in ("top1", "mean_class_acc", "many", "ece")}
    ends = ["results.json", *(p for p in RunDir.PLOTS if (out / p).exists())]
    tags = {"seed": "0", "commit": results["commit"], "machine": results["machine"]["hostname"]}

    client, run = mlflow_run(out)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["train.batch_size"] == "64"
    assert run.data.params["data.name"] == "digits_lt"
    assert run.data.params["train.loggers"] == '["mlflow", "wandb"]'
    assert tags.items() <= run.data.tags.items()
    for name in rows[0]:
        history = client.get_metric_history(run.info.run_id, name)
        assert [(m.step, m.value) for m in history] == \
            [(step, r[name]) for step, r in enumerate(rows, 1) if name in r]
    assert final.items() <= run.data.metrics.items()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"recipe.yaml", *ends}
    assert (out / "mlartifacts").is_dir()

    folders = wandb_folders(out)
    assert len(folders) == 1
    logged = wandb_run(folders[0])
    assert {f"{k}:{v}"[:64] for k, v in tags.items()} <= set(logged["tags"])
    assert logged["config"]["train.batch_size"] == 64 and logged["config"]["augment"] == []
    assert logged["history"] == [r | {"_step": step} for step, r in enumerate(rows, 1)]
    assert final.items() <= logged["summary"].items()
    assert logged["artifacts"]["recipe"] == {"recipe.yaml": md5_base64(out / "recipe.yaml")}
    assert logged["artifacts"]["results"] == {name: md5_base64(out / name) for name in ends}


@pytest.mark.long
def test_a_resumed_run_continues_the_same_runs_and_logs_each_epoch_once(tmp_path):
    """Checkpoints every 2 epochs and an interruption at the end of the 4th: the 3rd epoch,
    already logged, is trained again from the 2nd's checkpoint and must not be logged twice."""
    pytest.importorskip("torch.utils.tensorboard", reason="the [tb] extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = digits(train={"epochs": 5, "checkpoint_every": 2,
                           "loggers": ["mlflow", "wandb", "tensorboard"]})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(recipe, out, logger=StopAfter(3))
    first = json.loads(RunDir(out).tracking.read_text())
    assert first["mlflow"]["epochs"] == first["wandb"]["epochs"] == 3
    client, run = mlflow_run(out)
    assert run.info.status == "KILLED"
    results = train(recipe, out, resume=True, quiet=True)
    rows = expected_rows(results)

    client, resumed = mlflow_run(out)
    assert resumed.info.run_id == first["mlflow"]["run_id"] and resumed.info.status == "FINISHED"
    history = client.get_metric_history(resumed.info.run_id, "main/loss")
    assert [(m.step, m.value) for m in history] == \
        [(step, r["main/loss"]) for step, r in enumerate(rows, 1)]
    assert len(client.search_runs([resumed.info.experiment_id])) == 1

    # W&B cannot reopen an offline run: one folder per attempt, the same id, steps continued
    attempts = [wandb_run(f) for f in wandb_folders(out)]
    assert [a["id"] for a in attempts] == [first["wandb"]["id"]] * 2
    assert [[h["_step"] for h in a["history"]] for a in attempts] == [[1, 2, 3], [4, 5]]
    assert [h["main/loss"] for a in attempts for h in a["history"]] == \
        [r["main/loss"] for r in rows]
    assert "recipe" in attempts[0]["artifacts"] and "recipe" not in attempts[1]["artifacts"]

    events = EventAccumulator(str(RunDir(out).tensorboard))
    events.Reload()
    steps = [e.step for e in events.Scalars("main/loss")]
    assert sorted(steps) == [1, 2, 3, 3, 4, 5]  # TensorBoard keeps both attempts' events
    assert [e.step for e in events.Scalars("main/loss")][-2:] == [4, 5]


def test_a_failing_backend_is_reported_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    """MLflow fails from the second epoch on: one warning, the run finishes, the tracker holds
    the first epoch, and nothing more is tried. (A file store, opted into as MLflow 3 asks.)"""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    real = MlflowClient.log_batch
    calls = []

    def failing(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        if metrics and metrics[0].step >= 2:
            calls.append(metrics[0].step)
            raise MlflowException("API request to http://tracking:5000 failed")
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", failing)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    recipe = digits(train={"epochs": 3, "loggers": ["mlflow"], "mlflow": {"tracking_uri": uri}})
    results = train(recipe, tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "results.json").is_file() and len(results["history"]) == 3
    err = capsys.readouterr().err
    assert err.count("train.loggers: mlflow failed (MlflowException: API request to "
                     "http://tracking:5000 failed); training continues without it") == 1
    assert calls == [2]
    client, run = mlflow_run(tmp_path / "run", uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "main/loss")] == [1]
    assert run.info.status == "KILLED" and not RunDir(tmp_path / "run").mlflow_db.exists()
    assert json.loads(RunDir(tmp_path / "run").tracking.read_text())["mlflow"]["epochs"] == 1


def test_a_resumed_logger_sends_the_epochs_the_tracker_missed(tmp_path, monkeypatch):
    """Epochs checkpointed after the tracker's last write (it failed, or the process died between
    the two) are sent when the run resumes, at their own steps, and an over-long recipe value
    is cut to MLflow's limit rather than losing the run's params."""
    from lttoolbox.engine.loggers import LoggedRun
    from lttoolbox.engine.tracking import MLFLOW_PARAM_LENGTH, MLflowLogger
    from lttoolbox.recipe import dump_recipe, resolve

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store: no SQLite set-up
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", "false")  # as a store that refuses them
    uri = (tmp_path / "mlruns").as_uri()
    recipe = resolve(digits(train={"loggers": ["mlflow"], "mlflow": {"tracking_uri": uri}},
                            meta={"note": "x" * 7000}))
    out = tmp_path / "run"
    out.mkdir()
    dump_recipe(recipe, out / "recipe.yaml")
    rows = [{"phase": "main", "epoch": i, "loss": 2.0 - i / 4, "lr": 0.1,
             "images_per_second": 100.0 + i} for i in range(4)]
    logger = MLflowLogger(LoggedRun(out, recipe, [], ["abc"], {"hostname": "h"}))
    logger.epoch(rows[0])
    logger.close()
    logger = MLflowLogger(LoggedRun(out, recipe, rows[:3], ["abc"], {"hostname": "h"}))
    logger.epoch(rows[3])
    client, run = mlflow_run(out, uri)
    assert run.info.status == "RUNNING" and run.info.run_id == logger.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "main/loss")] \
        == [(i + 1, r["loss"]) for i, r in enumerate(rows)]
    note = run.data.params["meta.note"]
    assert len(note) == MLFLOW_PARAM_LENGTH and note.endswith("x...")
    logger.close()


def test_an_unreachable_tracking_server_does_not_stop_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    recipe = digits(train={"epochs": 1, "loggers": ["mlflow"],
                           "mlflow": {"tracking_uri": "http://127.0.0.1:9"}})
    train(recipe, tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "results.json").is_file()
    assert capsys.readouterr().err.count("train.loggers: mlflow failed") == 1


@pytest.mark.parametrize("logger", [n for n in LOGGERS if n != "tensorboard"])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch, logger):
    monkeypatch.setitem(sys.modules, logger, None)  # the extra is not installed
    recipe = write_recipe(tmp_path / "r.yaml", digits(train={"loggers": [logger]}))
    assert lttrain([str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f'error: train.loggers: the {logger} logger needs the [{logger}] extra: '
                   f'pip install -e ".[{logger}]"')
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("train.loggers=[neptune]", "train.loggers: unknown logger 'neptune'"),
    ("train.mlflow.experimen=x", "train.mlflow.experimen: unknown key; did you mean 'experiment'?"),
    ("train.wandb.mode=shared", "train.wandb.mode: unknown mode 'shared'"),
    ("train.wandb.project=a/b", "train.wandb.project: a W&B project name has at most 128"),
    ("train.mlflow=file", "train.mlflow: must be a mapping with the keys tracking_uri, "),
    ("train.loggers=[mlflow] train.mlflow.tracking_uri=file:///tmp/mlruns",
     "train.mlflow.tracking_uri: file:///tmp/mlruns is a file store, which this MLflow opens "
     "only with MLFLOW_ALLOW_FILE_STORE=true set"),
])
def test_bad_tracking_settings_are_one_line_before_anything_runs(tmp_path, capsys, override,
                                                                 message, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    recipe = write_recipe(tmp_path / "r.yaml", digits())
    assert lttrain([str(recipe), *override.split(), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_tracking_settings_do_not_change_the_recipe_hash():
    from lttoolbox.recipe import recipe_hash, resolve

    tracked = digits(train={"loggers": ["mlflow", "wandb"],
                            "mlflow": {"tracking_uri": "http://host:5000", "experiment": "lt"},
                            "wandb": {"project": "lt", "mode": "online", "dir": "/tmp"}})
    assert recipe_hash(resolve(tracked)) == recipe_hash(resolve(digits()))


@pytest.mark.long
def test_under_ddp_rank_0_alone_logs(tmp_path, monkeypatch):
    from test_distributed import digits as ddp_digits, run_ranks

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store: no SQLite set-up
    uri = (tmp_path / "mlruns").as_uri()
    recipe = ddp_digits("train.epochs=2", "train.loggers=[mlflow, wandb]",
                        f"train.mlflow.tracking_uri={uri}")
    out = tmp_path / "run"
    results = run_ranks(tmp_path, recipe, out)
    assert results["processes"] == 2
    client, run = mlflow_run(out, uri)
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "main/loss")] \
        == [(step, row["loss"]) for step, row in enumerate(results["history"], 1)]
    folders = wandb_folders(out)
    assert len(folders) == 1
    assert [h["_step"] for h in wandb_run(folders[0])["history"]] == [1, 2]
