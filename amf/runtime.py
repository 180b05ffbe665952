"""Where a training process runs: its device, its rank among data-parallel processes, its seeds.

One process, or one rank of a `torchrun` launch (nccl on GPU, gloo on CPU). `amf.train` asks
this module, so the launcher's environment variables are read in one place.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int
    world: int

    @property
    def main(self) -> bool:
        """Rank 0 validates, writes files and logs."""
        return self.rank == 0

    @property
    def show_bar(self) -> bool:
        return self.main and sys.stderr.isatty()


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or the only process: the one that writes shared files."""
    return int(os.environ.get("RANK", "0")) == 0


def start_runtime() -> Runtime:
    """This process's runtime, joining the process group first when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Runtime(device=device, rank=dist.get_rank() if world > 1 else 0, world=world)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def autocast_dtype(enabled: bool, device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only: bfloat16 where supported, else float16 (with a grad scaler)."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def parallel(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """The model itself in one process, wrapped in DistributedDataParallel across several."""
    if runtime.world == 1:
        return model
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def broadcast(flag: bool, runtime: Runtime) -> bool:
    """Rank 0's decision (e.g. early stop) for every rank."""
    if runtime.world == 1:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def barrier(runtime: Runtime) -> None:
    if runtime.world > 1:
        dist.barrier()
