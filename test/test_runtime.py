"""amf.runtime: one process by default; mixed precision only on CUDA. (DDP itself: test_train.py.)"""

from __future__ import annotations

import pytest
import torch

from amf import runtime


def test_a_plain_process_is_the_main_and_only_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    here = runtime.start_runtime()
    assert (here.device.type, here.rank, here.world, here.main) == ("cpu", 0, 1, True)
    model = torch.nn.Linear(2, 1)
    assert runtime.parallel(model, here) is model
    assert runtime.broadcast(True, here) is True and runtime.broadcast(False, here) is False


def test_other_ranks_are_not_main() -> None:
    assert not runtime.Runtime(torch.device("cpu"), rank=1, world=2).main


def test_mixed_precision_only_on_cuda_when_enabled() -> None:
    assert runtime.autocast_dtype(True, torch.device("cpu")) is None
    assert runtime.autocast_dtype(False, torch.device("cuda", 0)) is None


def test_seeding_repeats_the_random_streams() -> None:
    runtime.seed_everything(7)
    first = torch.rand(3)
    runtime.seed_everything(7)
    assert torch.equal(first, torch.rand(3))
