"""CPU run-time settings (eirnn/runtime.py): thread option parsing and the malloc tuning."""
import sys

import pytest
import torch

from eirnn.runtime import configure, resolve_threads, tune_malloc


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
