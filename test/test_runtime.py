"""amf.runtime: the launcher's environment read in one place, one process by default, the
collectives through a real (one-process gloo) group, mixed precision only on CUDA, seeding.
(Two real ranks: test_train.py's torchrun test.)"""

from __future__ import annotations

import random

import pytest
import torch
import torch.distributed as dist

from amf import runtime

CPU = torch.device("cpu")


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("one process must not touch torch.distributed")


def test_a_plain_process_joins_no_group_and_wraps_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torchrun's variables: world 1 on the CPU, and no torch.distributed call at all."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("init_process_group", "get_rank", "broadcast_object_list", "barrier"):
        monkeypatch.setattr(runtime.dist, name, _refuse)
    here = runtime.start_runtime()
    assert here == runtime.Runtime(CPU, rank=0, world=1) and here.main and runtime.is_main_process()
    model = torch.nn.Linear(2, 1)
    assert runtime.parallel(model, here) is model
    assert runtime.broadcast(True, here) is True and runtime.broadcast(False, here) is False
    runtime.barrier(here)


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu", "cuda"])
def test_a_torchrun_rank_joins_the_group_on_its_local_device(
    monkeypatch: pytest.MonkeyPatch, cuda: bool
) -> None:
    """torchrun's WORLD_SIZE/LOCAL_RANK/RANK: gloo on the CPU, nccl on GPU LOCAL_RANK, the rank
    from the group, and the group joined once."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    selected: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    joined: list[str] = []
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: bool(joined))
    monkeypatch.setattr(
        runtime.dist, "init_process_group", lambda *a, **k: joined.append(k.get("backend", a[0] if a else ""))
    )
    monkeypatch.setattr(runtime.dist, "get_rank", lambda *a: 3)
    here = runtime.start_runtime()
    device = torch.device("cuda", 1) if cuda else CPU
    assert here == runtime.Runtime(device, rank=3, world=4)
    assert not here.main and not runtime.is_main_process()
    assert joined == ["nccl" if cuda else "gloo"] and selected == ([device] if cuda else [])
    assert runtime.start_runtime() == here and len(joined) == 1


def test_collectives_and_ddp_run_through_a_real_gloo_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group torchrun's process already joined (one gloo process here): start_runtime takes
    the rank from it; DDP wraps a CPU model (no device ids) and keeps its gradients; broadcast
    and barrier go through the group."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        monkeypatch.setattr(runtime.dist, "init_process_group", _refuse)  # joined already
        here = runtime.start_runtime()
        assert here == runtime.Runtime(CPU, rank=0, world=2)
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        wrapped = runtime.parallel(model, here)
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) and wrapped.module is model
        batch = torch.randn(4, 3)
        wrapped(batch).sum().backward()
        gradient = model.weight.grad.clone()
        model.zero_grad()
        model(batch).sum().backward()
        torch.testing.assert_close(gradient, model.weight.grad)  # one rank: the mean is its own
        assert runtime.broadcast(True, here) is True and runtime.broadcast(False, here) is False
        runtime.barrier(here)
    finally:
        dist.destroy_process_group()


def test_only_rank_zero_on_a_terminal_shows_a_progress_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr(runtime.sys, "stderr", Terminal(True))
    assert runtime.Runtime(CPU, 0, 2).show_bar and not runtime.Runtime(CPU, 1, 2).show_bar
    monkeypatch.setattr(runtime.sys, "stderr", Terminal(False))
    assert not runtime.Runtime(CPU, 0, 1).show_bar


@pytest.mark.parametrize(
    ("enabled", "device", "bf16", "expected"),
    [
        (True, "cpu", True, None),
        (False, "cuda:0", True, None),
        (True, "cuda:0", True, torch.bfloat16),
        (True, "cuda:0", False, torch.float16),  # older GPUs: float16 (with a grad scaler)
    ],
)
def test_mixed_precision_only_on_cuda_in_bfloat16_where_supported(
    monkeypatch: pytest.MonkeyPatch, enabled: bool, device: str, bf16: bool, expected: torch.dtype | None
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert runtime.autocast_dtype(enabled, torch.device(device)) is expected


def test_seeding_repeats_the_random_streams_and_makes_cudnn_deterministic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    runtime.seed_everything(7)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    first = (torch.rand(3), random.random())
    runtime.seed_everything(7)
    second = (torch.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and first[1] == second[1]
    runtime.seed_everything(8)
    assert not torch.equal(torch.rand(3), first[0]) and random.random() != first[1]
