"""Convert a session file between the three formats: ``python -m eirnn.data.convert IN OUT``.

Formats come from the names: ``.mat`` (the lab's MATLAB export; only sessions in its SC
layout can be written), ``.nwb`` (:func:`eirnn.data.save_nwb`), ``.npz`` / ``.h5`` /
``.hdf5`` (:func:`eirnn.data.save_arrays`). ``IN`` may also be ``synthetic`` (the built-in
teacher session, ``--trials`` trials, ``--seed``). Reader options for a foreign NWB or
arrays file: ``--options JSON`` (the keys of ``data.options``). The converted file loads
to the same arrays (rates, inputs, factors, E/I labels, time axis), so it trains to the
same metrics with the same seed. Bad input: one line naming file and field, exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eirnn.errors import UserError, cli_main

from .mat_io import save_mat
from .sources import detect_format, load_session

__all__ = ["convert", "save_session", "main"]


def save_session(session, path) -> Path:
    """Write ``session`` in the format named by ``path``'s suffix."""
    fmt = detect_format(path)
    if fmt == "nwb":
        from .nwb_io import save_nwb
        return save_nwb(session, path)
    if fmt == "arrays":
        from .arrays_io import save_arrays
        return save_arrays(session, path)
    if Path(path).suffix.lower() != ".mat":
        raise ValueError(f"unknown output format for {path}: use .mat, .nwb, .npz, .h5 or .hdf5")
    return save_mat(session, path)


def convert(src, dst, options=None, trials: int = 1000, seed: int = 0):
    """Load ``src`` (or ``"synthetic"``) and write it to ``dst``; returns the session."""
    if str(src) == "synthetic":
        from .synthetic import make_synthetic_session
        session = make_synthetic_session(seed=seed, n_trials=trials)
    else:
        session = load_session(src, None, options)
    save_session(session, dst)
    return session


def options_hint(message: str) -> str:
    """``message`` with, when it names a training override ``data.options.KEY=VALUE``, how a
    command that takes ``--options JSON`` (convert, report) is given it instead, e.g.
    ``--options '{"bin_size_ms": MS}'``."""
    import re

    m = re.search(r"data\.options\.([A-Za-z_][\w.]*\w)(?:=([^\s;,)]+))?", message)
    if m is None:
        return message
    keys, raw = m.group(1).split("."), (m.group(2) or "...").split("|")[0]
    value = raw if (raw.isupper() and len(raw) > 1) or raw == "..." else json.dumps(raw)  # MS, COL: placeholders
    text = value
    for key in reversed(keys):
        text = "{" + json.dumps(key) + ": " + text + "}"
    return f"{message} (with this command: --options '{text}')"


@cli_main(also=(ValueError, FileNotFoundError), hint=options_hint)  # DataFormatError, a bad path: one line, status 2
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eirnn.data.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="input file (.mat, .nwb, .npz, .h5) or 'synthetic'")
    ap.add_argument("dst", help="output file (.mat, .nwb, .npz, .h5)")
    ap.add_argument("--options", default=None, help="reader options as JSON, e.g. '{\"bin_size_ms\": 20}'")
    ap.add_argument("--trials", type=int, default=1000, help="trials of the synthetic session (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic session (default 0)")
    args = ap.parse_args(argv)
    try:
        options = json.loads(args.options) if args.options else None
    except ValueError as e:
        raise UserError(f"--options: not JSON: {e}") from None
    s = convert(args.src, args.dst, options, trials=args.trials, seed=args.seed)
    print(f"{args.src} -> {args.dst}: {s.n_trials} trials x {s.n_time} bins of {s.bin_size_ms:g} ms x "
          f"{s.n_neurons} neurons, {s.n_inputs} inputs ({', '.join(s.input_names)}), "
          f"factors: {', '.join(s.factors) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
