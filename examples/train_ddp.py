"""Train a normalized classifier with DistributedDataParallel, N processes on one machine.

    torchrun --nproc_per_node=2 examples/train_ddp.py                       # CPU, gloo
    torchrun --nproc_per_node=4 examples/train_ddp.py --backend nccl        # 4 GPUs

Synthetic data (two interleaved spirals, generated from a seed, no download). Each rank takes
its shard of every global batch with a DistributedSampler; DDP all-reduces the gradients of
g, v (weight norm) or of the weight (spectral norm). Spectral norm's u, v are buffers: by
default DDP broadcasts rank 0's copies over the others before every forward (see
paranorm.distributed). At the end the script checks that every parameter and
buffer is identical on every rank, rank 0 saves the state_dict, and every rank ends the run
with paranorm.distributed.destroy_process_group(), which tears gloo down cleanly.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import tempfile
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import paranorm as pn


def spirals(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved 2-D spirals with a little noise; labels 0 and 1."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=gen).sqrt() * 3 * math.pi
    label = torch.randint(0, 2, (n,), generator=gen)
    angle = t + math.pi * label
    x = torch.stack([t * angle.cos(), t * angle.sin()], dim=1) / (3 * math.pi)
    return x + 0.02 * torch.randn(n, 2, generator=gen), label


def build(norm: str, method: str) -> nn.Module:
    model = nn.Sequential(
        nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            if norm == "weight_norm":
                pn.weight_norm(layer)
            elif norm == "spectral_norm":
                pn.spectral_norm(layer, method=method)
    return model


def ddp_buffer_sync(every_forward: bool) -> dict[str, Any]:
    """DDP's keyword for buffer syncing: torch 2.13 renamed broadcast_buffers.

    forward_sync_buffers=False still syncs buffers once at construction; the old
    broadcast_buffers=False skipped that too, leaving every rank with its own random u, v.
    """
    if every_forward:
        return {}  # the default: rank 0's buffers are broadcast before every forward
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def ranks_agree(model: nn.Module) -> bool:
    """Every parameter and buffer equal, bit for bit, to rank 0's."""
    flat = torch.cat([t.detach().flatten().float() for t in model.state_dict().values()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    same = torch.tensor([float(torch.equal(flat, reference))], device=flat.device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item() == 1.0)


def save_atomic(state: dict[str, torch.Tensor], path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def train(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> nn.Module:
    """Train under DDP; return the bare model. The DDP wrapper and the optimizer die with this
    function, so that nothing holds the process group when it is destroyed."""
    torch.manual_seed(0)  # the same initial model on every rank (DDP also broadcasts rank 0's)
    model = build(args.norm, args.method).to(device)
    x, y = spirals(4096, seed=1)
    if args.norm == "weight_norm":
        # Salimans & Kingma's data-dependent init, on the same batch on every rank.
        pn.data_dependent_init(model, x[:512].to(device))
    ddp = DistributedDataParallel(model, **ddp_buffer_sync(not args.no_forward_sync))
    sampler: DistributedSampler[Any] = DistributedSampler(TensorDataset(x, y), num_replicas=world, rank=rank, seed=2)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size // world, sampler=sampler)
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    step, epoch = 0, 0
    while step < args.steps:
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = nn.functional.cross_entropy(ddp(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0 or step == args.steps:
                mean = loss.detach().clone()
                dist.all_reduce(mean)
                if rank == 0:
                    print(f"step {step:4d}  loss {mean.item() / world:.4f}")
            if step == args.steps:
                break
        epoch += 1
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["gloo", "nccl"], default="gloo",
                        help="gloo for CPU processes, nccl for one GPU per process")
    parser.add_argument("--norm", choices=["none", "weight_norm", "spectral_norm"], default="weight_norm")
    parser.add_argument("--method", default="reshape", help="spectral_norm method")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch size")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--no-forward-sync", action="store_true",
                        help="no buffer broadcast before each forward (u, v then stay equal only "
                             "because every rank runs the same deterministic power step)")
    parser.add_argument("--out", default="", help="where rank 0 saves the trained state_dict")
    args = parser.parse_args()

    dist.init_process_group(args.backend)  # rank, world size, address: from torchrun's env
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    model = train(args, rank, world, device)
    model.eval()
    x, y = spirals(4096, seed=1)
    with torch.no_grad():
        accuracy = (model(x.to(device)).argmax(1) == y.to(device)).float().mean().item()
    agree = ranks_agree(model)
    if rank == 0:
        print(f"norm {args.norm}  world {world}  backend {args.backend}  "
              f"train accuracy {accuracy:.3f}  ranks agree: {agree}")
        if args.out:
            save_atomic({k: v.cpu() for k, v in model.state_dict().items()}, args.out)
    # Not torch's destroy_process_group alone: a DDP reducer left for the interpreter's exit
    # aborts the process in about one run of four (see paranorm.distributed).
    pn.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
