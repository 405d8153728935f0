"""``python -m eirnn.train --help`` without Hydra's per-group cost.

Hydra's ``--help`` lists every configuration group with its options; for each of the ~130
group look-ups (our groups and Hydra's own, whose list the default help template does not
even print) it deep-copies the whole configuration repository, ~2-3 s of CPU with this
project's ``conf/`` (experiments/speed.md). :func:`fast_help` prints the same text: the
composed configuration (Hydra's compose API, the same overrides) in Hydra's help template,
with the application's groups listed from the config directory (a group is a directory
holding at least one ``.yaml`` file, as in Hydra). It returns ``None`` -- and Hydra's own
``--help`` runs -- whenever anything else is asked (other Hydra flags, a help template that
uses ``$HYDRA_CONFIG_GROUPS`` or ``$FLAGS_HELP``, ``--resolve``), or when ``EIRNN_HYDRA_HELP=1`` is set.
"""
from __future__ import annotations

import os
import string
from pathlib import Path

__all__ = ["fast_help", "app_config_groups"]


def app_config_groups(config_dir: str) -> str:
    """``group: option, option`` lines (sorted) of the config groups under ``config_dir`` (not ``hydra/``)."""
    root = Path(config_dir)
    lines = []
    for d in sorted(p for p in root.rglob("*") if p.is_dir()):
        rel = d.relative_to(root).as_posix()
        if rel == "hydra" or rel.startswith("hydra/") or any(part.startswith((".", "__")) for part in d.parts):
            continue
        options = sorted(f.stem for f in d.iterdir() if f.is_file() and f.suffix in (".yaml", ".yml"))
        if options:
            lines.append((rel, f"{rel}: {', '.join(options)}"))
    return "".join(line + "\n" for _, line in sorted(lines))


def fast_help(argv: list[str], config_dir: str, config_name: str, job_name: str = "train") -> str | None:
    """The ``--help`` text for ``argv`` (``sys.argv``), or ``None`` when Hydra should produce it."""
    args = list(argv[1:])
    if os.environ.get("EIRNN_HYDRA_HELP") == "1" or not any(a in ("--help", "-h") for a in args):
        return None
    rest = [a for a in args if a not in ("--help", "-h")]
    if any(a.startswith("-") for a in rest):
        return None  # other Hydra flags (--resolve, --multirun, --config-dir, ...): Hydra's own handling
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name=job_name):
            cfg = compose(config_name, overrides=rest, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    template = str(cfg.hydra.help.template)
    if "$HYDRA_CONFIG_GROUPS" in template or "$FLAGS_HELP" in template:
        return None
    clean = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    return string.Template(template).substitute(
        APP_CONFIG_GROUPS=app_config_groups(config_dir), CONFIG=OmegaConf.to_yaml(clean))
