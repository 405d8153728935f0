"""Small helpers shared across modules."""
from __future__ import annotations

from typing import Any, Iterable


def flatten_config(cfg: Any, prefix: str = "", skip: Iterable[str] = ()) -> dict[str, Any]:
    """Flatten a nested dict/list config to ``{"a.b.c": scalar}`` (lists and None become strings)."""
    skip = set(skip)
    out: dict[str, Any] = {}
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            if not prefix and k in skip:
                continue
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(flatten_config(v, key))
            elif isinstance(v, (int, float, bool, str)):
                out[key] = v
            else:
                out[key] = str(v)
    return out


# ----------------------------------------------------------------- number format
def fmt_num(v: Any, spec: str = ".4f", na: str = "n/a", nan: str | None = "n/a", inf: str | None = None) -> str:
    """``format(v, spec)`` for a table or console line: ``None`` -> ``na``, NaN -> ``nan``,
    +-inf -> ``inf``; ``nan=None`` / ``inf=None`` format those values like any other number
    (``'nan'``, ``'inf'``). The one NaN-aware number formatter of the package."""
    import math

    if v is None:
        return na
    try:
        x = float(v)
    except (TypeError, ValueError):
        return format(v, spec)
    if nan is not None and math.isnan(x):
        return nan
    if inf is not None and math.isinf(x):
        return inf
    return format(v, spec)


def fmt_epoch(epoch: Any) -> str:
    """A 0-based ``epoch`` index as people read it, counted from 1 (console, train.log,
    TensorBoard's step, training_report.md, the export); ``'n/a'`` for ``None``."""
    return "n/a" if epoch is None else str(int(epoch) + 1)


# ----------------------------------------------------------------- atomic writes
_NO_SPACE = {28, 122}  # errno ENOSPC, EDQUOT


def free_space(path) -> str:
    """Free space of the file system holding ``path`` (or its nearest existing parent), e.g. ``'12.3 MiB'``."""
    import os
    import shutil
    from pathlib import Path

    p = Path(os.fspath(path)).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"  # pragma: no cover


def atomic_write(path, write, mode: str = "wb", by_path: bool = False):
    """Write ``path`` all at once or not at all: ``write(f)`` fills a temporary file *beside*
    ``path`` (same folder, so same file system), which is flushed, fsync'ed and then
    ``os.replace``'d over ``path``. On any failure the temporary file is removed and the
    previous ``path`` is left as it was; a full disk (ENOSPC/EDQUOT) becomes
    :class:`eirnn.errors.DiskFullError` naming the path and the free space.

    ``write`` is a callable taking the open file (``mode`` ``"wb"`` or ``"w"``), or the
    ``bytes``/``str`` to write; with ``by_path=True`` it is called with the temporary
    file's path instead (writers that want a file name, e.g. h5py). Returns ``path`` as a :class:`~pathlib.Path`.
    The one writer of the package: JSON (:func:`write_json_atomic`), torch files
    (:func:`torch_save_atomic`), checkpoints (:class:`AtomicCheckpointIO`), text, MAT files.
    """
    import os
    import tempfile
    from pathlib import Path

    from eirnn.errors import DiskFullError

    path = Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        if by_path:
            os.close(fd)
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
                if callable(write):
                    write(f)
                else:
                    f.write(write)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
        try:  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except (OSError, RuntimeError) as err:  # torch.save wraps its writer's OSError in a RuntimeError
        if isinstance(err.__context__, KeyboardInterrupt):
            # Ctrl+C inside torch.save: its zip writer's cleanup raises a RuntimeError that would hide
            # the interrupt (a traceback and "failed" instead of an interrupted run); the partial file goes
            raise err.__context__ from None
        if isinstance(err, DiskFullError) or not _caused_by_no_space(err):
            raise
        if tmp is not None:  # free the partial file first: the free space reported is what is left
            try:
                os.unlink(tmp)
            except OSError:
                pass
            tmp = None
        raise DiskFullError(28, f"{path}: disk full ({free_space(path.parent)} free after removing the partial "
                                f"file); not written, the previous file is unchanged") from err
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def _caused_by_no_space(err: BaseException) -> bool:
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and getattr(err, "errno", None) in _NO_SPACE:
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def write_json_atomic(path, obj) -> None:
    """``obj`` as indented JSON (NaN/inf as ``null``, numpy scalars/arrays as numbers/lists), atomically."""
    import json

    text = json.dumps(jsonable(obj), indent=2, sort_keys=False)
    atomic_write(path, text, mode="w")


def write_text_atomic(path, text: str) -> None:
    """``text`` into ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, text, mode="w")


def savefig_atomic(fig, path, **kwargs) -> None:
    """``fig.savefig`` into ``path`` atomically; the format is taken from the suffix."""
    from pathlib import Path

    fmt = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))


def np_save_atomic(path, array) -> None:
    """``np.save(path, array, allow_pickle=False)`` atomically."""
    import numpy as np

    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def torch_save_atomic(obj, path) -> None:
    """``torch.save(obj)`` into ``path`` atomically (:func:`atomic_write`)."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def jsonable(obj):
    """``obj`` with numpy types made plain and non-finite floats made ``None`` (JSON ``null``)."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    return obj


def atomic_checkpoint_io():
    """A Lightning ``CheckpointIO`` whose saves go through :func:`atomic_write` (temporary
    file beside the checkpoint, fsync, rename): a full disk leaves the previous ``best.ckpt``
    loadable and raises :class:`eirnn.errors.DiskFullError`. Pass as ``Trainer(plugins=[...])``."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            torch_save_atomic(checkpoint, path)

    return AtomicCheckpointIO()
