"""DDP and FSDP2 on CPU (gloo, 2 processes on 127.0.0.1) against a single-process run.

The test runs this file as a script; the script starts 2 workers with torch.multiprocessing
spawn, each trains the same normalized models on its half of one global batch and saves its
final state_dict; the test compares the ranks with each other and with a single-process run on
the whole batch, computed here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import paranorm as pn
from paranorm import ParanormError
from paranorm._spectral_norm import PARAMETRIZATIONS as METHODS

WORLD = 2
STEPS = 8
TOL = {"rtol": 1e-5, "atol": 1e-6}


def configs() -> dict[str, dict[str, Any]]:
    """Every normalization to train: weight norm and each spectral method with state."""
    out: dict[str, dict[str, Any]] = {"weight_norm": {"norm": "weight_norm"}}
    for method in sorted(METHODS):
        out[f"spectral_norm-{method}"] = {"norm": "spectral_norm", "method": method}
    return out


#: The normalizations that have a fast path (paranorm.fast_paths): the scaled forward.
FAST_CONFIGS = ("weight_norm", "spectral_norm-reshape")


def build(config: dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    for i in (0, 2, 4):
        if config["norm"] == "weight_norm":
            pn.weight_norm(model[i])
        else:
            pn.spectral_norm(model[i], method=config["method"])
    return model


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    return torch.randn(16, 6, generator=gen), torch.randn(16, 2, generator=gen)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """SGD with momentum; two forwards per step, like D(real) and D(fake) in a GAN."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(STEPS):
        opt.zero_grad()
        half = x.shape[0] // 2
        loss = ((model(x[:half]) - y[:half]) ** 2).mean() + ((model(x[half:]) - y[half:]) ** 2).mean()
        loss.backward()
        opt.step()


def _full(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in sd.items()}


def _no_forward_sync() -> dict[str, bool]:
    """DDP's keyword for "no buffer broadcast before each forward" (torch >= 2.13 renamed it)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}  # still syncs buffers once, at construction
    return {"broadcast_buffers": False}


def _perturb(state: nn.Module) -> None:
    """Give this rank its own u, v (u <- normalize(W v) only reads v: change both)."""
    with torch.no_grad():
        state._u.copy_(torch.nn.functional.normalize(torch.randn(state._u.shape), dim=0))
        state._v.copy_(torch.nn.functional.normalize(torch.randn(state._v.shape), dim=0))


def _worker(rank: int, port: int, outdir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    # Every DDP wrapper and sharded model lives and dies inside _run: one still alive at the
    # interpreter's exit aborts the process at gloo's teardown (see paranorm.distributed).
    results = _run(rank)
    torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))
    pn.distributed.destroy_process_group()


def _run(rank: int) -> dict[str, Any]:
    x, y = global_batch()
    # Each rank gets its own half of each of the two half-batches used per step.
    xs = torch.cat([c.chunk(WORLD)[rank] for c in x.chunk(2)])
    ys = torch.cat([c.chunk(WORLD)[rank] for c in y.chunk(2)])
    results: dict[str, Any] = {}
    results.update(_train_every_config(xs, ys))
    results.update(_train_fast_paths(xs, ys))
    results.update(_buffer_sync_cases(rank, xs))
    results.update(_power_vector_cases(rank))
    results.update(_sharded_refusals())
    return results


def _train_every_config(xs: torch.Tensor, ys: torch.Tensor) -> dict[str, Any]:
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from torch.nn.parallel import DistributedDataParallel as DDP

    results: dict[str, Any] = {}
    for name, config in configs().items():
        for sync in (True, False):
            model = build(config)
            train(DDP(model, **({} if sync else _no_forward_sync())), xs, ys)
            results[f"ddp-{name}-{sync}"] = _full(model.state_dict())
        model = build(config)
        pn.distributed.fully_shard(model)
        train(model, xs, ys)
        results[f"fsdp-{name}"] = _full(model.state_dict())
        # FSDP2 mixed precision: bfloat16 compute copies, float32 master weights and reduction.
        model = build(config)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        pn.distributed.fully_shard(model, mp_policy=policy)
        train(model, xs.bfloat16(), ys.bfloat16())
        results[f"fsdp_bf16-{name}"] = _full(model.state_dict())
    return results


def _train_fast_paths(xs: torch.Tensor, ys: torch.Tensor) -> dict[str, Any]:
    """The fast paths under DDP and FSDP2, with every layer on the scaled forward (its size
    thresholds lowered for these tiny layers); a separate model records which path ran."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from paranorm._fast import scaled as _scaled

    for key in _scaled.MIN_WEIGHT_NUMEL:
        _scaled.MIN_WEIGHT_NUMEL[key] = 0
    _scaled.ACTIVATION_RATIO = 1
    results: dict[str, Any] = {}
    with pn.fast_paths():
        for name in FAST_CONFIGS:
            model = build(configs()[name])
            train(DDP(model), xs, ys)
            results[f"ddp_fast-{name}"] = _full(model.state_dict())
            model = build(configs()[name])
            pn.distributed.fully_shard(model)
            train(model, xs, ys)
            results[f"fsdp_fast-{name}"] = _full(model.state_dict())
            probe = build(configs()[name])
            DDP(probe)(xs[:2])
            out = probe(xs[:2])  # DDP wraps the output: read the layer's own node
            results[f"path-ddp_fast-{name}"] = type(out.grad_fn).__name__
            probe = build(configs()[name])
            pn.distributed.fully_shard(probe)
            results[f"path-fsdp_fast-{name}"] = type(probe(xs[:2]).grad_fn).__name__
    return results


def _buffer_sync_cases(rank: int, xs: torch.Tensor) -> dict[str, Any]:
    """What buffer syncing does to the power-iteration state: rank 1 draws its own u, v, either
    after DDP is built (only a per-forward sync can undo it) or before (an init sync can)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    results: dict[str, Any] = {}
    options = {
        "forward-sync": {},
        "no-forward-sync": _no_forward_sync(),
        "broadcast_buffers-False-before": {"broadcast_buffers": False},
        "no-forward-sync-before": _no_forward_sync(),
    }
    for case, kwargs in options.items():
        model = build({"norm": "spectral_norm", "method": "reshape"})
        state = model[0].parametrizations.weight[0]
        before = case.endswith("-before")
        if before and rank == 1:
            _perturb(state)
        ddp = DDP(model, **kwargs)
        if not before and rank == 1:
            _perturb(state)
        ddp(xs)
        results[f"u-{case}"] = state._u.clone()
    return results


def _power_vector_cases(rank: int) -> dict[str, Any]:
    """method="power" on a conv creates its vector on the first forward unless input_shape= is
    given: DDP lists buffers at construction, so only a vector that existed then is synced."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    results: dict[str, Any] = {}
    for case in ("power-lazy", "power-input_shape"):
        torch.manual_seed(0)
        conv = nn.Conv1d(1, 4, 3)
        extra = {"input_shape": (1, 10)} if case == "power-input_shape" else {}
        pn.spectral_norm(conv, method="power", **extra)
        ddp = DDP(conv)
        signal = torch.randn(4, 1, 10, generator=torch.Generator().manual_seed(5))
        ddp(signal)
        ((_, vector),) = conv.named_buffers()
        if rank == 1:
            with torch.no_grad():
                vector.copy_(torch.nn.functional.normalize(torch.randn(vector.shape), dim=None))
        ddp(signal)
        results[f"x-{case}"] = vector.clone()
    return results


def _sharded_refusals() -> dict[str, Any]:
    """Normalizing after sharding is refused at registration, with the fix in the message."""
    results: dict[str, Any] = {}
    sharded = nn.Sequential(nn.Linear(4, 4))
    pn.distributed.fully_shard(sharded)
    for fn in (pn.weight_norm, pn.spectral_norm):
        try:
            fn(sharded[0])
            results[f"after-shard-{fn.__name__}"] = "no error"
        except ParanormError as error:
            results[f"after-shard-{fn.__name__}"] = str(error)
    try:
        pn.distributed.fully_shard(sharded)
        results["shard-twice"] = "no error"
    except ParanormError as error:
        results["shard-twice"] = str(error)
    return results


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    outdir = tmp_path_factory.mktemp("distributed")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, __file__, str(_free_port()), str(outdir)],
        env=env, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(Path(outdir) / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _reference(config: dict[str, Any]) -> dict[str, torch.Tensor]:
    model = build(config)
    x, y = global_batch()
    # The same examples in the same two half-batches as the ranks see together.
    train(model, x, y)
    return _full(model.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(configs()))
@pytest.mark.parametrize("engine", ["ddp-True", "ddp-False", "fsdp"])
def test_ranks_identical_and_equal_single_process(ranks, name, engine):
    kind, _, broadcast = engine.partition("-")
    key = f"{kind}-{name}" + (f"-{broadcast}" if broadcast else "")
    ref = _reference(configs()[name])
    states = [r[key] for r in ranks]
    assert set(states[0]) == set(ref)
    buffers = [k for k in ref if k.endswith(("._u", "._v")) or "._x_" in k]
    # State: the reshape method's u, v and the power method's input-shaped vector; fft and gram
    # are stateless.
    assert bool(buffers) == (name in ("spectral_norm-reshape", "spectral_norm-power"))
    for k in ref:
        # Bit for bit the same on every rank: all-reduce gives every rank the same sum.
        assert torch.equal(states[0][k], states[1][k]), (key, k)
        torch.testing.assert_close(states[0][k], ref[k], **TOL, msg=f"{key} {k}")
    # It trained: the parameters moved from their initial values.
    init = build(configs()[name]).state_dict()
    assert any(not torch.allclose(init[k], ref[k]) for k in ref if k not in buffers)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST_CONFIGS)
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_fast_paths_under_ddp_and_fsdp(ranks, name, engine):
    """With pn.fast_paths() every layer takes the scaled forward; ranks agree bit for bit and
    match the single-process run of the default (materialized) path."""
    ref = _reference(configs()[name])
    for rank in ranks:
        assert rank[f"path-{engine}_fast-{name}"] == "_ScaledLayerBackward"
    states = [r[f"{engine}_fast-{name}"] for r in ranks]
    assert set(states[0]) == set(ref)
    for k in ref:
        assert torch.equal(states[0][k], states[1][k]), (engine, name, k)
        torch.testing.assert_close(states[0][k], ref[k], **TOL, msg=f"{engine} fast {name} {k}")


#: bfloat16 forward and backward (8 bits of mantissa) for 8 SGD steps. Measured (torch 2.13
#: CPU): at most 4.6e-3 absolute (float32 DDP and FSDP2: at most 1.3e-7).
BF16_TOL = {"rtol": 2e-2, "atol": 2e-2}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(configs()))
def test_fsdp_bfloat16_mixed_precision_trains_like_float32(ranks, name):
    ref = _reference(configs()[name])
    states = [r[f"fsdp_bf16-{name}"] for r in ranks]
    for k in ref:
        assert states[0][k].dtype == ref[k].dtype  # master weights and u, v stay float32
        assert torch.equal(states[0][k], states[1][k]), k
        torch.testing.assert_close(states[0][k], ref[k], **BF16_TOL, msg=k)


@pytest.mark.slow
def test_buffer_sync_decides_whose_power_iteration_state_survives(ranks):
    def same(case: str) -> bool:
        return torch.equal(ranks[0][f"u-{case}"], ranks[1][f"u-{case}"])

    # Default: rank 0's u, v replace rank 1's before the power step of every forward.
    assert same("forward-sync")
    # No per-forward sync: rank 1 keeps iterating from its own u, v.
    assert not same("no-forward-sync")
    # broadcast_buffers=False also skips the sync at construction: rank-local u, v survive.
    assert not same("broadcast_buffers-False-before")
    if "forward_sync_buffers" in _no_forward_sync():
        # forward_sync_buffers=False (torch >= 2.13) still syncs once, at construction.
        assert same("no-forward-sync-before")


@pytest.mark.slow
def test_power_vector_created_after_ddp_is_not_synced(ranks):
    # Registered with input_shape=: the vector exists when DDP is built and is broadcast.
    assert torch.equal(ranks[0]["x-power-input_shape"], ranks[1]["x-power-input_shape"])
    # Created by the first forward, after DDP listed the buffers: each rank keeps its own.
    assert not torch.allclose(ranks[0]["x-power-lazy"], ranks[1]["x-power-lazy"])


@pytest.mark.slow
def test_normalizing_a_sharded_module_is_refused(ranks):
    for r in ranks:
        for norm in ("weight_norm", "spectral_norm"):
            message = r[f"after-shard-{norm}"]
            assert "already sharded" in message and f"Apply {norm} first, then shard" in message
        assert "already sharded" in r["shard-twice"]


def test_fully_shard_needs_a_process_group():
    with pytest.raises(ParanormError, match="init_process_group"):
        pn.distributed.fully_shard(pn.weight_norm(nn.Linear(3, 3)))


def test_destroy_process_group_without_a_group_does_nothing():
    pn.distributed.destroy_process_group()
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_example_runs_under_torchrun(tmp_path):
    example = Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", f"--master_port={_free_port()}", str(example),
         "--steps", "20", "--norm", "spectral_norm", "--out", str(tmp_path / "model.pt")],
        env=env, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ranks agree: True" in proc.stdout
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert any(k.endswith("._u") for k in state)


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(int(sys.argv[1]), sys.argv[2]), nprocs=WORLD)
