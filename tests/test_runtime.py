"""CPU run-time settings (eirnn/runtime.py): thread option parsing and the malloc tuning."""
import sys

import pytest
import torch

from eirnn.runtime import auto_threads, configure, resolve_threads, tune_malloc


def test_threads_option_values():
    assert resolve_threads("auto") is None and resolve_threads(None) is None
    assert resolve_threads(2) == 2 and resolve_threads("1") == 1
    for bad in ("two", 0, -1, "1.5"):
        with pytest.raises(ValueError, match="threads"):
            resolve_threads(bad)


def test_configure_sets_threads_and_reports():
    before = torch.get_num_threads()
    try:
        note = configure(1, malloc_tuning=False)
        assert torch.get_num_threads() == 1 and "torch threads 1" in note and "malloc" not in note
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_malloc_tuning_is_applied_once():
    first = tune_malloc()
    assert first.startswith("malloc tuning: on")
    assert tune_malloc() == first


def test_auto_threads_uses_idle_cores_only():
    assert auto_threads(2, cores=2, load=0.1) == 2
    assert auto_threads(2, cores=2, load=1.2) == 1  # one core busy with another job
    assert auto_threads(2, cores=2, load=7.5) == 1  # never fewer than one
    assert auto_threads(4, cores=16, load=0.0) == 4  # never more than torch's default
