"""Interleaved step timing, peak memory and saved activations of one step: plain
PyTorch, shared by the
layer benchmark (``tools/analysis_tools/benchmark_moe.py``) and the model benchmark
(:mod:`mod_squad.analysis.benchmark`)."""
import statistics
import time
from typing import Callable, Dict, Optional

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

Step = Callable[[], None]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(steps: Dict[str, Step],
                     warmup: int,
                     rounds: int,
                     iters: int,
                     device: torch.device = torch.device('cpu'),
                     on_step: Optional[Callable[[], None]] = None,
                     clock: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
    """Median over interleaved rounds of the mean time (ms) of each step.

    Every step first runs ``warmup`` times; then each of ``rounds`` rounds runs every
    step ``iters`` times in turn, so that a drift of the machine (other jobs, clock
    changes) reaches every step alike. ``on_step`` is called after each step run
    (e.g. a progress bar's update).
    """
    if rounds < 1 or iters < 1:
        raise ValueError(f'time_interleaved needs rounds >= 1 and iters >= 1, got '
                         f'rounds={rounds}, iters={iters}.')
    for step in steps.values():
        for _ in range(warmup):
            step()
            if on_step is not None:
                on_step()
    samples = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            synchronize(device)
            start = clock()
            for _ in range(iters):
                step()
                if on_step is not None:
                    on_step()
            synchronize(device)
            samples[name].append((clock() - start) / iters * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def _cpu_peak_bytes(step: Step) -> int:
    """Peak of the bytes allocated on the CPU by ``step`` above those allocated
    before it: the running sum of torch's allocation and free events (profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == '[memory]' and e.device_type() == DeviceType.CPU),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def peak_memory_mib(step: Step, device: torch.device) -> float:
    """Peak tensor memory (MiB) of one run of ``step`` above that allocated before
    it: CUDA ``max_memory_allocated``; CPU the running sum of torch's allocations
    and frees during the step (profiler memory events), the same quantity without
    the allocator's caching."""
    device = torch.device(device)
    if device.type == 'cuda':
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return _cpu_peak_bytes(step) / 2**20


def saved_activations_mib(step: Step) -> float:
    """MiB that autograd keeps for backward while ``step`` runs its forward: the
    storages of the saved tensors, each once, leaves that require grad (parameters,
    the input) and views of them not counted. The activation memory of training, and, unlike the peak,
    the same on every machine and run."""
    storages = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor if tensor._base is None else tensor._base
        if not (base.is_leaf and base.requires_grad):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(storages.values()) / 2**20
