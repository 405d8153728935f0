"""A run folder belongs to one run (run.lock, unique names, the Hydra guard that claims the folder).

* Unique default names: ``outputs/<task>/runs/<date>_<time>_<token>`` where ``<token>`` is
  6 random hex digits drawn once per process (resolver ``${eirnn_token:}``), so jobs started
  in the same second get different folders.
* :class:`RunFolderGuard` (a Hydra callback, ``conf/hydra/default.yaml``) runs before Hydra
  creates the folder, writes ``.hydra/`` or opens the log: it checks every configuration
  value (:func:`eirnn.config_check.check_config`), then claims the folder. A folder that
  already holds another run (``metrics.json``, ``checkpoints/``, ``tensorboard/``,
  ``cv_metrics.json``) or is in use (a live ``run.lock``) is refused in one line (exit 2);
  nothing in it is touched (not even ``.hydra/config.yaml``). Unless the run resumes
  from a checkpoint inside that folder (``ckpt_path=RUN/checkpoints/last.ckpt
  hydra.run.dir=RUN``) or is an ``eirnn.cv`` run with ``cv.resume=true``. A multirun refuses
  a sweep folder that already holds jobs.
* ``run.lock`` (JSON: pid, host, start time) marks a run being written; it is removed when the
  process ends. A lock whose process is gone (kill -9, power loss) is *stale*: resuming
  replaces it. :func:`refuse_if_running` makes ``eirnn.export`` / ``eirnn.evaluate`` refuse
  a folder whose lock is held by a live process.
"""
from __future__ import annotations

import atexit
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

from eirnn.errors import RunFolderError, UserError, exit_user_error

__all__ = ["LOCK_NAME", "RUN_MARKERS", "RunFolderGuard", "claim", "release", "lock_holder", "refuse_if_running",
           "register_resolvers"]

LOCK_NAME = "run.lock"
# what a run leaves once it has trained (a folder with only .hydra/ and a log is an attempt
# that stopped before training, e.g. at a data error: it may be reused)
RUN_MARKERS = ("metrics.json", "checkpoints", "tensorboard", "cv_metrics.json")
_TOKEN = secrets.token_hex(3)
_HELD: set[Path] = set()


def register_resolvers() -> None:
    """``${eirnn_token:}``: 6 hex digits, the same for the whole process (one per run)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("eirnn_token"):
        OmegaConf.register_new_resolver("eirnn_token", lambda: _TOKEN)


# ---------------------------------------------------------------------- lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def lock_holder(run_dir: Path | str) -> dict | None:
    """The live holder of ``run_dir/run.lock`` (``{"pid", "host", "started"}``), or ``None``
    when there is no lock, it is stale (its process is gone) or it is this process's own."""
    path = Path(run_dir) / LOCK_NAME
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable or half-written by a crash: treat as stale
    pid, host = info.get("pid"), info.get("host")
    if pid == os.getpid() and host == socket.gethostname():
        return None
    if host != socket.gethostname():
        return info  # another machine's process: cannot tell, assume it runs
    return info if _pid_alive(pid) else None


def _describe(info: dict) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    text = f"pid {info.get('pid')} on {info.get('host')}, started {when}"
    if info.get("host") != socket.gethostname():  # cannot see that machine's processes
        text += f"; if that job no longer runs, delete its {LOCK_NAME}"
    return text


def refuse_if_running(run_dir: Path | str, what: str = "read") -> None:
    """Raise :class:`RunFolderError` when ``run_dir`` is still being written by a live process."""
    info = lock_holder(run_dir)
    if info is not None:
        raise RunFolderError(f"{run_dir}: still being written by a running job ({_describe(info)}); "
                             f"wait until it ends (its {LOCK_NAME} disappears) to {what} it")


def _write_lock(run_dir: Path) -> None:
    from eirnn.utils import write_json_atomic

    lock = run_dir / LOCK_NAME
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": sys.argv}
    try:  # O_EXCL: of two processes claiming the same folder at once, one wins
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        holder = lock_holder(run_dir)
        if holder is not None:
            raise RunFolderError(f"{run_dir}: in use by another run ({_describe(holder)}); "
                                 "choose another hydra.run.dir") from None
        write_json_atomic(lock, info)  # stale (or ours): take it over
    else:
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
    _HELD.add(run_dir)


def release(run_dir: Path | str | None = None) -> None:
    """Remove this process's ``run.lock`` from ``run_dir`` (every folder it holds when ``None``)."""
    dirs = list(_HELD) if run_dir is None else [Path(run_dir).absolute()]
    for d in dirs:
        lock = d / LOCK_NAME
        try:
            info = json.loads(lock.read_text())
            if info.get("pid") == os.getpid():
                lock.unlink()
        except (OSError, ValueError):
            pass
        _HELD.discard(d)


atexit.register(release)


# ----------------------------------------------------------------- ownership
def _holds_run(run_dir: Path) -> list[str]:
    return [m for m in RUN_MARKERS if (run_dir / m).exists()]


def _raw(cfg, key: str):
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:
        node = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node


def _resumes_into(cfg, run_dir: Path) -> bool:
    """``ckpt_path`` points into ``run_dir`` (or is written relative to the run's own folder)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False).get("ckpt_path") if OmegaConf.is_config(cfg) else None
    if raw is None:
        return False
    if isinstance(raw, str) and ("${paths.output_dir}" in raw or "${hydra:runtime.output_dir}" in raw):
        return True
    try:
        ckpt = Path(str(_raw(cfg, "ckpt_path"))).absolute().resolve()
    except Exception:
        return False
    return run_dir.resolve() in ckpt.parents


def claim(run_dir: Path | str, cfg=None) -> Path:
    """Make ``run_dir`` this run's: refuse one that holds another run (see the module
    docstring), then create it and write ``run.lock``. Returns the absolute folder."""
    run_dir = Path(run_dir).absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: exists and is not a folder; choose another hydra.run.dir")
    holder = lock_holder(run_dir) if run_dir.is_dir() else None
    if holder is not None:
        raise RunFolderError(f"{run_dir}: in use by another run ({_describe(holder)}); choose another hydra.run.dir")
    markers = _holds_run(run_dir) if run_dir.is_dir() else []
    if markers and cfg is not None:
        resume_ok = _resumes_into(cfg, run_dir) or (
            str(_raw(cfg, "task_name")) == "cv" and bool(_raw(cfg, "cv.resume")))
        if not resume_ok:
            raise RunFolderError(
                f"{run_dir}: already holds another run ({', '.join(markers)}); a new run needs its own folder "
                f"(leave hydra.run.dir at its default, or choose a new one); to continue that run pass "
                f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_lock(run_dir)
    except UserError:
        raise
    except OSError as err:  # read-only file system, permissions, a full disk
        raise RunFolderError(f"{run_dir}: cannot create the run folder or its {LOCK_NAME} "
                             f"({err.strerror or err})") from None
    return run_dir


# --------------------------------------------------------------- Hydra hook
try:
    from hydra.experimental.callback import Callback as _HydraCallback
except Exception:  # pragma: no cover
    _HydraCallback = object


class RunFolderGuard(_HydraCallback):
    """Hydra callback: config check and run-folder claim before Hydra writes anything.

    ``on_run_start`` (single run): :func:`eirnn.config_check.check_config`, then
    :func:`claim` of ``hydra.run.dir``. ``on_multirun_start``: the sweep folder must not
    hold jobs already. ``on_job_start`` (each multirun job): the job folder's ``run.lock``.
    A refusal prints ``error: ...`` in one line and exits 2 before anything is written.
    """

    def _fail(self, err: UserError) -> None:
        sys.exit(exit_user_error(err))

    def on_run_start(self, config, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        from eirnn.config_check import check_config

        try:
            check_config(config)
            run_dir = OmegaConf.select(config, "hydra.run.dir")
            claim(Path(str(run_dir)), config)
        except UserError as err:
            self._fail(err)

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        try:
            sweep = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute()
            if sweep.is_dir():
                jobs = [p.name for p in sweep.iterdir() if p.is_dir() and _holds_run(p)]
                if jobs or (sweep / "multirun.yaml").exists():
                    raise RunFolderError(f"{sweep}: already holds another sweep ({len(jobs)} job folders); "
                                         "choose another hydra.sweep.dir")
        except UserError as err:
            self._fail(err)

    def on_job_start(self, config, **kwargs: Any) -> None:
        from hydra.types import RunMode
        from omegaconf import OmegaConf

        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        out = OmegaConf.select(config, "hydra.runtime.output_dir")
        try:
            _write_lock(Path(str(out)).absolute())
        except UserError as err:  # the job fails; the sweep goes on (Hydra records it)
            raise RuntimeError(str(err)) from None

    def on_job_end(self, config, job_return=None, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        out = OmegaConf.select(config, "hydra.runtime.output_dir")
        if out:
            release(Path(str(out)))
