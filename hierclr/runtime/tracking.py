"""MLflow tracking for pretraining: one MLflow run per Ray Train run, written by the driver and the rank-0 worker.

The driver calls :meth:`Tracker.start` (params, tags, the resolved config) and passes ``tracker.run_id`` and
:func:`resolved_uri` to the workers; the rank-0 worker calls :meth:`Tracker.attach` and logs the metrics of
each epoch with ``step=epoch`` and the encoders. Tracking is a side channel: the checkpoints hold everything
needed to resume, so a tracking store that cannot be reached logs one warning and the tracker turns into a
no-op (``enabled`` False) instead of stopping training. Errors in what the caller passes (a metric that is
not a number, an encoder that does not return a tensor) still raise.

Only :class:`mlflow.MlflowClient` is used for runs, so no global active run exists and a tracker is safe in
threads and Ray actors. This module does not import Ray.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import posixpath
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import mlflow
import mlflow.pytorch
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.models import infer_signature
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)
from pydantic import BaseModel

from hierclr.config.loader import flatten
from hierclr.config.sections import TrackingSection
from hierclr.io.mlflow_store import (
    COMMAND_ENV,
    PROBE_HTTP,
    RUN_HTTP,
    SQLITE,
    global_tracking_uri,
    http_settings,
    resolved_uri,
    store_lock,
)
from hierclr.models.loading import EPOCH_TAG

log = logging.getLogger(__name__)

RUN_KEY_TAG = "hierclr.run_key"
COMMAND_TAG = "hierclr.command"  # the command line that made the run
PROBE_TIMEOUT_S = 5
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]

_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")


# ----------------------------------------------------------------------------------------------- URIs
def _artifact_location(uri: str, experiment: str) -> str | None:
    """For a local sqlite store, experiment artifacts go next to the database (``<db dir>/mlruns/<name>``).

    MLflow's default for sqlite stores is ``./mlruns`` in the working directory of whoever creates the
    experiment, which scatters artifacts when the database lives elsewhere."""
    if not uri.startswith(SQLITE):
        return None
    path = uri[len(SQLITE):].partition("?")[0]
    if path in ("", ":memory:"):
        return None
    return (Path(path).parent / "mlruns" / _BAD_KEY_CHARS.sub("_", experiment).replace("/", "_")).as_uri()


def _short(err: BaseException, limit: int = 600) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def source_tags() -> dict[str, str]:
    """The tags MLflow's fluent ``start_run`` would set (user, source name and type: its own context registry), the
    git commit, branch and remote of the hierclr checkout that runs (not of the entry script, which under ``ray job
    submit`` is a copy without ``.git``), and ``hierclr.command``: the command line (``HIERCLR_COMMAND``, set by
    the CLI, so a sweep's trials carry their sweep's command), and as the source name its first two words."""
    import sys

    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import mlflow_tags
    from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url

    import hierclr

    tags = dict(resolve_tags({}))
    here = os.path.dirname(os.path.abspath(hierclr.__file__))
    for key, value in ((mlflow_tags.MLFLOW_GIT_COMMIT, get_git_commit(here)),
                       (mlflow_tags.MLFLOW_GIT_BRANCH, get_git_branch(here)),
                       (mlflow_tags.MLFLOW_GIT_REPO_URL, get_git_repo_url(here))):
        if value:
            tags[key] = value
    command = os.environ.get(COMMAND_ENV) or " ".join(sys.argv)
    tags[COMMAND_TAG] = command
    # the run page's Source shows the part after the last "/": the verb, not a path from the arguments
    tags[mlflow_tags.MLFLOW_SOURCE_NAME] = " ".join(command.split()[:2])
    return {k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in tags.items()}


def _warn_unreachable(uri: str, err: BaseException) -> None:
    log.warning("MLflow tracking store %s cannot be used (%s): training continues without MLflow "
                "tracking; metrics stay in the Ray Train checkpoints and results.", uri, _short(err))


def _connect(cfg: TrackingSection) -> tuple[str, MlflowClient, Any] | None:
    """Client for the resolved URI and the experiment (or None if it does not exist yet), after one probe
    with a short timeout and no retries; None (and one warning) when the store cannot be reached."""
    uri = resolved_uri(cfg)
    try:
        # an unreachable server fails in seconds; a new local store is created by one process at a time
        with http_settings(PROBE_HTTP, override=True), store_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(cfg.experiment)
    except Exception as err:  # noqa: BLE001 - any store failure means no tracking, never a failed training
        _warn_unreachable(uri, err)
        return None
    return uri, client, experiment


def _filter_quote(value: str) -> str:
    for q in ("'", '"'):
        if q not in value:
            return f"{q}{value}{q}"
    raise ValueError(f"run key {value!r} contains both quote characters; MLflow search cannot express it")


def find_run(cfg: TrackingSection, key: str) -> str | None:
    """The newest run of ``cfg.experiment`` tagged ``hierclr.run_key = key`` (a resumed Ray run reopens it);
    None if there is none, tracking is off, or the store cannot be reached (then with a warning)."""
    if not cfg.enabled:
        return None
    connected = _connect(cfg)
    if connected is None:
        return None
    uri, client, experiment = connected
    try:
        with http_settings(RUN_HTTP, override=False):
            return _find_run(client, experiment, key)
    except Exception as err:  # noqa: BLE001
        _warn_unreachable(uri, err)
        return None


def _find_run(client: MlflowClient, experiment: Any, key: str) -> str | None:
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], f"tags.`{RUN_KEY_TAG}` = {_filter_quote(key)}",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


# ----------------------------------------------------------------------------------------------- keys and values
def sanitize_key(key: str) -> str:
    """A metric/param name MLflow accepts: characters outside ``alphanumerics _ - . space / :`` become ``_``,
    empty and ``.``/``..`` path segments are dropped (MLflow rejects non-normalised paths), at most 250 chars."""
    clean = _BAD_KEY_CHARS.sub("_", str(key))
    clean = "/".join(p for p in clean.split("/") if p not in ("", ".", ".."))
    clean = clean[:MAX_ENTITY_KEY_LENGTH].rstrip("/")
    if not clean or posixpath.normpath(clean) != clean:
        raise ValueError(f"cannot turn {key!r} into an MLflow metric or param name")
    return clean


def _param_values(params: Mapping[str, Any] | BaseModel) -> dict[str, str]:
    """Flattened, sanitised, stringified (as ``mlflow.log_params`` does) and truncated to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in flatten(params if isinstance(params, BaseModel) else dict(params)).items():
        text = str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            log.warning("MLflow param %s is %d characters long; truncated to MLflow's limit of %d "
                        "(the full value is in the config artifact).", key, len(text), MAX_PARAM_VAL_LENGTH)
            text = text[:MAX_PARAM_VAL_LENGTH]
        out[sanitize_key(key)] = text
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------------------------------------- tracker
class Tracker:
    """One MLflow run. Build it with :meth:`start` (driver), :meth:`attach` (rank-0 worker) or
    :meth:`disabled`; every method is a no-op once ``enabled`` is False.

    ``log_metrics`` is idempotent per (metric, step): the steps already in the run are read when the tracker
    is built, so an epoch that a resumed run trains again is recorded once (the first record is kept).
    Non-finite values are logged, with a warning, rather than dropped: a NaN loss is worth seeing in the UI.
    MLflow's database stores keep NaN and clamp +-inf to +-1.8e308.
    """

    def __init__(self, client: MlflowClient | None = None, run_id: str | None = None, uri: str | None = None,
                 experiment_id: str | None = None) -> None:
        self._client = client
        self._run_id = run_id
        self._uri = uri
        self._experiment_id = experiment_id
        self._logged: dict[str, set[int]] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------- construction
    @classmethod
    def disabled(cls) -> Tracker:
        return cls()

    @classmethod
    def start(cls, cfg: TrackingSection, *, run_name: str, params: Mapping[str, Any] | BaseModel,
              tags: Mapping[str, str] | None = None, run_id: str | None = None,
              run_key: str | None = None) -> Tracker:
        """Create the run (or reopen ``run_id``, else the newest run tagged ``run_key``) and log ``params``
        (nested dicts are flattened to dotted names). On reopening, params already there with the same value
        are skipped and changed ones keep their first value with a warning (MLflow forbids changing them)."""
        if not cfg.enabled:
            return cls.disabled()
        values = _param_values(params)  # a bad key raises here, before a run exists
        connected = _connect(cfg)
        if connected is None:
            return cls.disabled()
        uri, client, experiment = connected
        all_tags = {k: str(v)[:MAX_TAG_VAL_LENGTH] for k, v in (tags or {}).items()}
        if run_key is not None:
            all_tags[RUN_KEY_TAG] = run_key
        try:
            with http_settings(RUN_HTTP, override=False):
                if run_id is None and run_key is not None:
                    run_id = _find_run(client, experiment, run_key)
                run = cls._reopen(client, run_id) if run_id is not None else None
                reopened = run is not None
                if not reopened:
                    with store_lock(uri):  # two runs at once must not both create the experiment
                        if experiment is None:
                            experiment = client.get_experiment_by_name(cfg.experiment)
                        experiment_id = cls._experiment_id_for(client, uri, cfg.experiment, experiment)
                    run = client.create_run(experiment_id, run_name=run_name, tags={**source_tags(), **all_tags})
            tracker = cls(client, run.info.run_id, uri, run.info.experiment_id)
        except Exception as err:  # noqa: BLE001
            _warn_unreachable(uri, err)
            return cls.disabled()
        if reopened:
            log.info("MLflow: resuming run %s (%s) at %s", run.info.run_id, run.info.run_name, uri)
            tracker.set_tags(all_tags)
            tracker._call("read metric history", tracker._read_logged_steps, run)
        tracker._log_params(values, dict(run.data.params))
        return tracker

    @classmethod
    def attach(cls, cfg: TrackingSection, run_id: str | None) -> Tracker:
        """Log into an existing run (the rank-0 worker); ``run_id`` None (tracking off on the driver) or
        ``cfg.enabled`` False give a disabled tracker without a warning. ``cfg.uri`` should already be
        :func:`resolved_uri` from the driver."""
        if not cfg.enabled or run_id is None:
            return cls.disabled()
        connected = _connect(cfg)
        if connected is None:
            return cls.disabled()
        uri, client, _ = connected
        try:
            with http_settings(RUN_HTTP, override=False):
                run = client.get_run(run_id)
        except Exception as err:  # noqa: BLE001
            _warn_unreachable(uri, err)
            return cls.disabled()
        tracker = cls(client, run_id, uri, run.info.experiment_id)
        tracker._call("read metric history", tracker._read_logged_steps, run)
        return tracker

    @staticmethod
    def _experiment_id_for(client: MlflowClient, uri: str, name: str, experiment: Any) -> str:
        if experiment is None:
            return client.create_experiment(name, artifact_location=_artifact_location(uri, name))
        if experiment.lifecycle_stage == "deleted":
            log.warning("MLflow experiment %r at %s was deleted; restoring it to log this run.", name, uri)
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    @staticmethod
    def _reopen(client: MlflowClient, run_id: str) -> Any:
        try:
            with http_settings(RUN_HTTP, override=False):
                run = client.get_run(run_id)
        except mlflow.exceptions.MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning("MLflow run %s to resume does not exist; starting a new run.", run_id)
            return None
        if run.info.lifecycle_stage == "deleted":
            log.warning("MLflow run %s to resume was deleted; starting a new run.", run_id)
            return None
        client.update_run(run_id, status="RUNNING")
        return run

    # ------------------------------------------------------------------- state
    @property
    def enabled(self) -> bool:
        return self._run_id is not None

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def uri(self) -> str | None:
        """The resolved tracking URI (pass it to the workers), None when disabled."""
        return self._uri if self.enabled else None

    def _call(self, what: str, fn: Any, *args: Any, disable: bool = True, **kwargs: Any) -> Any:
        """Run one MLflow operation; on any failure warn and (``disable``) turn the tracker off, never raise."""
        with self._lock:
            if not self.enabled:
                return None
            try:
                with http_settings(RUN_HTTP, override=False):
                    return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001
                if not disable:
                    log.warning("MLflow %s failed for run %s at %s (%s); training and tracking continue.",
                                what, self._run_id, self._uri, _short(err))
                    return None
                log.warning("MLflow %s failed at %s (%s): MLflow tracking is off for the rest of this run "
                            "(run %s); training continues and metrics stay in the Ray Train checkpoints.",
                            what, self._uri, _short(err), self._run_id)
                self._client = None
                self._run_id = None
                return None

    def _log_batch(self, *, metrics: list[Metric] = (), params: list[Param] = (), tags: list[RunTag] = ()) -> None:
        # synchronous: with MLFLOW_ENABLE_ASYNC_LOGGING set, errors would surface later, outside _call
        self._client.log_batch(self._run_id, metrics=metrics, params=params, tags=tags, synchronous=True)

    def _read_logged_steps(self, run: Any) -> None:
        for key in run.data.metrics:
            self._logged[key] = {m.step for m in self._client.get_metric_history(self._run_id, key)}

    # ------------------------------------------------------------------- logging
    def log_params(self, params: Mapping[str, Any] | BaseModel) -> None:
        """Log params (nested dicts and configs flattened to dotted names); ones already in the run are skipped,
        changed ones keep their first value with a warning (MLflow forbids changing a param)."""
        if not self.enabled:
            return
        values = _param_values(params)
        existing = self._call("read params", lambda: dict(self._client.get_run(self._run_id).data.params))
        if existing is not None:
            self._log_params(values, existing)

    def _log_params(self, values: dict[str, str], existing: Mapping[str, str]) -> None:
        changed = sorted(k for k, v in values.items() if k in existing and existing[k] != v)
        if changed:
            log.warning("MLflow run %s already has different values for %d params, which MLflow cannot change; "
                        "it keeps the first ones: %s", self._run_id, len(changed),
                        ", ".join(f"{k}={existing[k]!r} (now {values[k]!r})" for k in changed[:20]))
        new = [Param(k, v) for k, v in values.items() if k not in existing]
        for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self._call("log params", self._log_batch, params=new[i:i + MAX_PARAMS_TAGS_PER_BATCH])

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log ``metrics`` at ``step`` (the epoch); a (metric, step) already in the run is skipped."""
        if not self.enabled:
            return
        step = int(step)
        values = {sanitize_key(k): float(v) for k, v in metrics.items()}  # a non-number raises: a caller bug
        nonfinite = sorted(k for k, v in values.items() if not math.isfinite(v))
        if nonfinite:
            log.warning("non-finite metrics at step %d logged to MLflow as they are: %s", step,
                        ", ".join(f"{k}={values[k]}" for k in nonfinite))
        with self._lock:
            fresh = {k: v for k, v in values.items() if step not in self._logged.get(k, ())}
            if len(fresh) < len(values):
                log.info("MLflow run %s already has step %d of %s (a resumed run); not logged again",
                         self._run_id, step, ", ".join(sorted(set(values) - set(fresh))))
            now = _now_ms()
            batch = [Metric(k, v, now, step) for k, v in fresh.items()]
            for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
                self._call("log metrics", self._log_batch, metrics=batch[i:i + MAX_METRICS_PER_BATCH])
            if self.enabled:
                for k in fresh:
                    self._logged.setdefault(k, set()).add(step)

    def log_dataset(self, uri: str, *, context: str, digest: str | None = None,
                    tags: Mapping[str, str] | None = None) -> None:
        """Record a dataset the run read (``mlflow.log_input`` through the client: a ``mlflow.data`` MetaDataset of
        ``uri``, ``context`` training / evaluation): the run page's Datasets column."""
        if not self.enabled:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        def log() -> None:
            import warnings

            with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local path is local
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(uri)
            dataset = MetaDataset(source, name="/".join(uri.rstrip("/").split("/")[-2:]) or uri, digest=digest)
            input_tags = [InputTag(MLFLOW_DATASET_CONTEXT, context), *(InputTag(k, str(v)) for k, v in
                                                                         (tags or {}).items())]
            self._client.log_inputs(self._run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), input_tags)])

        self._call("log dataset", log, disable=False)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled and tags:
            self._call("set tags", self._log_batch,
                       tags=[RunTag(k, str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file, or a directory's contents, into the run's artifacts (under ``artifact_path``)."""
        if not self.enabled:
            return
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact to log does not exist: {path}")
        fn = self._client.log_artifacts if path.is_dir() else self._client.log_artifact
        self._call(f"log artifact {path}", fn, self._run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """``text`` as the artifact ``artifact_file`` (e.g. ``config.yaml``)."""
        if self.enabled:
            self._call(f"log text {artifact_file}", self._client.log_text, self._run_id, text, artifact_file)

    def log_dict(self, data: Mapping[str, Any] | list, artifact_file: str) -> None:
        """``data`` as a JSON or YAML artifact (by the extension of ``artifact_file``)."""
        if self.enabled:
            self._call(f"log dict {artifact_file}", self._client.log_dict, self._run_id, data, artifact_file)

    def log_encoder(self, name: str, module: torch.nn.Module, example_input: torch.Tensor, *, step: int = 0,
                    serialization_format: Literal["pt2", "pickle"] = "pt2") -> str | None:
        """Log an eval-mode CPU copy of ``module`` as the MLflow PyTorch model ``name`` (e.g. ``encoder_best``),
        linked to the run at ``step``, with a signature inferred from ``example_input`` (a batch) and its output,
        and two rows of it as input example. Returns the model URI ``models:/<id>``, None when disabled or failed.

        ``pt2`` (MLflow 3's default): a ``torch.export`` graph, loadable without hierclr; the example has two
        rows so the batch dimension stays dynamic (``torch.export`` fixes a dimension of size 1). ``pickle``:
        the module object itself, loading needs hierclr importable. The caller's module is not touched (DDP
        and ``torch.compile`` wrappers are unwrapped). A failure here (e.g. a model ``torch.export`` cannot
        trace) logs a warning and leaves the tracker on: the weights are in the checkpoints anyway."""
        if not self.enabled:
            return None
        while isinstance(module, torch.nn.parallel.DistributedDataParallel) or hasattr(module, "_orig_mod"):
            module = module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) \
                else module._orig_mod
        encoder = copy.deepcopy(module).cpu().eval()
        example = example_input.detach().cpu()[:2]
        if len(example) == 1:
            example = torch.cat([example, example])
        with torch.no_grad():
            output = encoder(example)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"log_encoder: {type(module).__name__} returned {type(output).__name__}, "
                            "expected one tensor (log the backbone, not the MoCo wrapper)")
        signature = infer_signature(example.numpy(), output.numpy())
        info = self._call(f"log model {name}", self._log_model, name, encoder, signature, example.numpy(),
                          int(step), serialization_format, disable=False)
        return None if info is None else info.model_uri

    def _log_model(self, name: str, encoder: torch.nn.Module, signature: Any, input_example: Any, step: int,
                   serialization_format: str) -> Any:
        # mlflow.pytorch.log_model creates its LoggedModel in the *active* experiment (else "Default") and
        # resolves the store from the global tracking URI: create the model in this run's experiment here, and
        # point the global URI at this store only for the duration of the call.
        model = self._client.create_logged_model(self._experiment_id, name=name, source_run_id=self._run_id,
                                                 tags={EPOCH_TAG: str(step)})  # which epoch: export records it
        try:
            with global_tracking_uri(self._uri):
                return mlflow.pytorch.log_model(
                    encoder, name=name, model_id=model.model_id, run_id=self._run_id, step=step,
                    signature=signature, input_example=input_example, serialization_format=serialization_format,
                    pip_requirements=mlflow.pytorch.get_default_pip_requirements(),  # skips slow inference
                )
        except Exception:
            self._client.finalize_logged_model(model.model_id, "FAILED")
            raise

    def status(self) -> str | None:
        """The run's current status in the store (RUNNING, FINISHED, ...), None when disabled or unreadable."""
        if not self.enabled:
            return None
        run = self._call("read run status", self._client.get_run, self._run_id, disable=False)
        return None if run is None else run.info.status

    def finish(self, status: RunStatus = "FINISHED") -> None:
        """End the run with ``status``; the tracker is disabled afterwards."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"run status must be FINISHED, FAILED or KILLED, got {status!r}")
        if self.enabled:
            self._call("end run", self._client.set_terminated, self._run_id, status)
            self._client = None
            self._run_id = None


def log_datasets(tracker, cfg, streams: dict) -> None:
    """The run's training and val splits as MLflow dataset inputs (the run page's Datasets); a parquet split's
    digest comes from its manifest's shard hashes, so runs on the same prepared data show the same digest."""
    import hashlib

    for name, context in (("train", "training"), ("val", "evaluation")):
        stream = streams.get(name)
        if stream is None:
            continue
        src = stream.source
        digest = None
        if src.manifest is not None:
            digest = hashlib.sha256("".join(sh.sha256 for sh in src.manifest.shards).encode()).hexdigest()[:12]
        tags = {"rows": src.num_rows}
        fraction = getattr(cfg.data, "fraction", 1.0)
        if name == "train" and fraction < 1:
            tags.update({"data.fraction": fraction, "data.fraction_seed": cfg.data.fraction_seed})
        tracker.log_dataset(src.uri, context=context, digest=digest, tags=tags)
