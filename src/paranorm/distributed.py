"""Normalized models on torch.distributed: what works, what is refused, and one helper.

What paranorm guarantees (tested on CPU with gloo, 2 processes, in tests/test_distributed.py):

- DDP (``torch.nn.parallel.DistributedDataParallel``): weight norm and spectral norm (every
  method) train as a single process would on the global batch, and every parameter and buffer
  ends bit-identical on every rank. DDP all-reduces the gradients of g, v or of ``original``;
  the power-iteration state (the reshape method's u, v, the power method's ``_x_*``) are
  buffers. With buffer syncing on (DDP's default; ``broadcast_buffers=True``, renamed
  ``forward_sync_buffers`` in torch 2.13) rank 0's buffers overwrite every other rank's at the
  start of each forward, before the power step, so the state is identical on every rank by
  construction, for one small broadcast per forward. Without it the state stays identical only
  because every rank runs the same deterministic power step on the same weight from the same
  start; a rank whose vectors were changed (a checkpoint loaded on one rank only) keeps its own
  and normalizes by a slightly different sigma. The old ``broadcast_buffers=False`` also skips
  the sync at construction, so ranks seeded differently start from different u, v;
  ``forward_sync_buffers=False`` still syncs once there. DDP lists the buffers when it is
  built: the power method's vector for a conv is created by the first forward unless
  ``input_shape=`` is given, and a vector created later is never synced. paranorm recommends:
  normalize before wrapping (weight norm creates new parameters an existing DDP does not
  know), pass ``input_shape=`` to method="power" on convs, keep buffer syncing on, and load
  checkpoints on every rank.
- FSDP2 (``torch.distributed.fsdp.fully_shard``): normalize first, then shard. FSDP gathers
  the full g, v (or ``original``) before each forward, so the parametrization sees whole
  tensors; u, v are buffers and are not sharded. :func:`fully_shard` does that with one FSDP
  unit per normalized layer and one for the root.
- Normalizing a module whose parameters are already sharded (DTensor) is refused at
  registration (:func:`check_not_sharded`): torch's own weight_norm/spectral_norm fail there
  in the forward with "mixed torch.Tensor and DTensor" or a clamp_min_ placement error.
- Ending a run: a DDP wrapper (its reducer) or an FSDP2 model still alive when the interpreter
  exits keeps the process group alive too, and gloo's threads are then torn down during
  interpreter finalization: the process aborts with "terminate called without an active
  exception" (SIGABRT) in about one run of four, after training succeeded (torch 2.13, also
  without paranorm). :func:`destroy_process_group` ends a run cleanly: drop your references
  to the wrappers first (train in a function), then call it on every rank.
"""

from __future__ import annotations

import gc
from typing import Any

import torch
from torch import nn

from ._errors import ParanormError, entry_point
from ._normalization import normalized_names
from ._validate import check_not_sharded as check_not_sharded
from ._validate import is_sharded as is_sharded

__all__ = ["check_not_sharded", "destroy_process_group", "fully_shard", "is_sharded"]


@entry_point("fully_shard")
def fully_shard(model: nn.Module, **fsdp_kwargs: Any) -> nn.Module:
    """Shard a normalized model with FSDP2: one unit per normalized layer, then the root.

    Each normalized layer (paranorm's, torch's or torch's legacy hooks) becomes its own FSDP
    unit, so its full weight exists only around its own forward and backward. ``fsdp_kwargs``
    go to :func:`torch.distributed.fsdp.fully_shard` unchanged (``mesh``, ``mp_policy``, ...).
    Needs an initialized process group.

    Raises:
        ParanormError: no process group, or a parameter of ``model`` is already sharded.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ParanormError(
            "torch.distributed is not initialized; call "
            "torch.distributed.init_process_group(...) (or run under torchrun) first."
        )
    for path, param in model.named_parameters():
        if is_sharded(param):
            raise ParanormError(
                f"parameter {path} of {type(model).__name__} is already sharded; "
                "pass the unsharded model (normalize, then call fully_shard once)."
            )
    from torch.distributed.fsdp import fully_shard as torch_fully_shard

    for module in model.modules():
        if module is not model and normalized_names(module):
            torch_fully_shard(module, **fsdp_kwargs)
    torch_fully_shard(model, **fsdp_kwargs)
    return model


def destroy_process_group() -> None:
    """End a distributed run cleanly: free what holds the process group, sync, then destroy it.

    torch.distributed.destroy_process_group() only unregisters the default group; the group
    lives on while a DDP reducer or an FSDP2 state refers to it, and if that lasts until the
    interpreter exits, gloo's worker threads are destroyed during finalization and the process
    aborts ("terminate called without an active exception"). So: collect the wrappers (they
    sit in reference cycles, which only the garbage collector frees), wait for every rank
    (none closes its connections while another still uses them), then destroy the group.
    Call it on every rank, after the last collective, with no reference to a DDP wrapper or
    sharded model left (train in a function that returns what you keep). Does nothing if no
    group is initialized.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    gc.collect()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
