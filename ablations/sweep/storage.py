"""The storage and the study: where a sweep's trials live (any Optuna RDB URL), the Optuna study made from a study
file, and its sampler and pruner. A stored study remembers the settings it was started with (its fingerprint);
a sweep with other settings is refused rather than mixed into it."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from ablations.ioutil import first_line, redact
from ablations.sweep.study import Study

HEARTBEAT_S = 20
GRACE_S = 120
# A trial whose worker stopped (no heartbeat for GRACE_S, or its process gone on this host) is queued again by
# Optuna's retry callback, which copies its parameters and user attributes (arm, seed, run folder).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    RETRY = RetryHeartbeatStaleTrialCallback(max_retry=None)


class SweepError(RuntimeError):
    """A sweep that cannot go on (bad storage, a study that does not match the stored one, missing data)."""


def default_out_dir(study: Study) -> Path:
    return Path("runs") / "sweeps" / study.name


def storage_url(out_dir: Path, url: str | None) -> str:
    if url:
        return url
    out_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(out_dir / 'optuna.db').resolve()}"


def check_storage_reachable(url: str) -> None:
    """Fail early, with the URL (password hidden) in the message, when a database server cannot be reached."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and not Path(path).parent.exists():
            raise SweepError(f"--storage {redact(url)}: folder {Path(path).parent} does not exist")
        return
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as error:
        raise SweepError(f"--storage {redact(url)}: cannot connect ({redact(first_line(error))})") from None


def open_storage(url: str, *, heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S) -> optuna.storages.RDBStorage:
    # SQLite: several local workers write one file, so wait for its lock (and see _immediate_transactions);
    # servers: drop dead connections.
    sqlite = url.startswith("sqlite")
    engine = {"connect_args": {"timeout": 120, "isolation_level": None}} if sqlite else {"pool_pre_ping": True}
    # Workers started together on a fresh database race to create Optuna's tables; the loser retries and finds
    # them made.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=heartbeat,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=RETRY,
                )
            if sqlite:
                _immediate_transactions(storage.engine)
            return storage
        except Exception as error:
            if attempt < 4 and type(error).__name__ in ("IntegrityError", "ProgrammingError", "OperationalError"):
                time.sleep(0.5 + attempt)
                continue
            raise SweepError(
                f"--storage {redact(url)}: cannot open ({type(error).__name__}: {redact(first_line(error))})"
            ) from None
    raise AssertionError("unreachable")


def _immediate_transactions(engine) -> None:
    """Make every transaction on a SQLite storage take the database's write lock when it begins.

    Optuna claims a queued trial by reading its state and, when it is WAITING, writing RUNNING
    (``set_trial_state_values``; ``study.ask`` pops queued trials the same way). On PostgreSQL the read is a
    ``SELECT … FOR UPDATE`` and the claim is exclusive. SQLite ignores FOR UPDATE, and Python's sqlite3 opens a
    transaction only before the first write, so two workers could both read WAITING and both win the same trial
    (4 of 4 racing processes did, in 9 of 10 rounds, on a 2-core AMD EPYC). With the driver's own transaction
    handling off (``isolation_level=None`` in ``open_storage``) every transaction starts with ``BEGIN IMMEDIATE``:
    the read happens under the write lock; the next claimer waits for it (the timeout) and reads RUNNING."""
    import sqlalchemy

    sqlalchemy.event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))


def make_sampler(study: Study) -> optuna.samplers.BaseSampler:
    seed = study.seeds[0]
    if study.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, study.total // 3 + 1))
    if study.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, study.total // 3)))
    return optuna.samplers.RandomSampler(seed=seed)  # grid studies draw only nuisance parameters


def make_pruner(study: Study) -> optuna.pruners.BasePruner:
    p = dict(study.pruner or {})
    kind = p.pop("kind", None)
    if kind is None:
        return optuna.pruners.NopPruner()
    warmup = int(p.get("warmup_steps", 0))
    startup = int(p.get("startup_trials", 2))
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if kind == "percentile":
        return optuna.pruners.PercentilePruner(
            float(p.get("percentile", 25.0)), n_startup_trials=startup, n_warmup_steps=warmup
        )
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=int(p.get("min_resource", 1)))
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=int(p.get("min_resource", 1)))
