"""What a run writes to the console and to ``train.log``.

Hydra's job logging gives the root logger two handlers: the console (stdout) and the run's
``train.log``. Every line that matters goes through that logger once, so it lands in both:

- :func:`setup_run_logging` routes Lightning's INFO lines through the root logger only (Lightning
  also gives its own logger a stderr handler, which printed them twice);
- :func:`announce` prints a block (the final summary) as plain text on the console and writes
  it once into ``train.log``;
- a record logged with ``extra={"console": False}`` goes to ``train.log`` only (used while a
  progress bar owns the terminal line, see :class:`~eirnn.training.callbacks.EpochProgressBar`);
- :func:`config_tree` is the composed config as a tree, logged at start (``print_config=false``
  skips it).
"""
from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("eirnn.train")

_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


class _NotOnConsole(logging.Filter):
    """Drops records logged with ``extra={"console": False}`` (they go to files only)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True) is not False


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def setup_run_logging() -> None:
    """Idempotent. When the root logger has handlers (a Hydra run): Lightning's loggers
    propagate to it and lose their own stderr handlers; console handlers skip file-only records."""
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in _LIGHTNING_LOGGERS:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if _is_console(h):
                lg.removeHandler(h)
        lg.propagate = True
    for h in root.handlers:
        if _is_console(h) and not any(isinstance(f, _NotOnConsole) for f in h.filters):
            h.addFilter(_NotOnConsole())


def file_handlers_present() -> bool:
    return any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers)


def announce(text: str, logger: logging.Logger = log) -> None:
    """``text`` on stdout as it is (no log prefix) and once into ``train.log``."""
    print(text, flush=True)
    logger.info("%s", text if "\n" not in text else "\n" + text, extra={"console": False})


def to_file_only(text: str, logger: logging.Logger = log) -> None:
    """``text`` into ``train.log`` only (the console shows it another way)."""
    logger.info("%s", text, extra={"console": False})


def stdout_is_terminal() -> bool:
    try:
        return bool(sys.stdout.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def config_tree(cfg: Any) -> str:
    """The composed config as a tree: one branch per top-level group, YAML below it.

    Interpolations are resolved where they can be (``${seed}`` -> 42); a section that cannot be
    resolved outside its run is shown as written.
    """
    from omegaconf import DictConfig, OmegaConf

    keys = list(cfg.keys())
    scalars = [k for k in keys if not isinstance(cfg._get_node(k), DictConfig)]
    groups = [k for k in keys if k not in scalars and k != "hydra"]
    lines = ["config"]
    entries: list[tuple[str, list[str]]] = []
    for k in scalars:
        try:
            text = OmegaConf.to_yaml(OmegaConf.create({k: OmegaConf.select(cfg, k, throw_on_resolution_failure=True)}))
        except Exception:
            text = f"{k}: {OmegaConf.to_container(cfg, resolve=False).get(k)}"
        entries.append((text.strip(), []))
    for k in groups:
        try:
            body = OmegaConf.to_yaml(cfg[k], resolve=True)
        except Exception:
            body = OmegaConf.to_yaml(cfg[k], resolve=False)
        entries.append((k, body.rstrip("\n").splitlines()))
    for i, (head, body) in enumerate(entries):
        last = i == len(entries) - 1
        lines.append(("└── " if last else "├── ") + head)
        pad = "    " if last else "│   "
        lines.extend(pad + line for line in body)
    return "\n".join(lines)
