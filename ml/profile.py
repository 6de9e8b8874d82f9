"""Cost of a model on the CPU: parameters, FLOPs, weights size, latency and throughput."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: torch.nn.Module, input_size: int) -> int:
    """Forward FLOPs of one image (multiply and add counted separately)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, input_size, input_size))
    return int(counter.get_total_flops())


def measure_latency(predictor, image, runs: int = 50, warmup: int = 5, threads: int = 2) -> dict:
    """Milliseconds to predict one image end to end (decode, resize, normalise, forward, softmax)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            predictor.predict([image])
        times = []
        for _ in range(runs):
            tick = time.perf_counter()
            predictor.predict([image])
            times.append((time.perf_counter() - tick) * 1000)
    finally:
        torch.set_num_threads(previous)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))],
            "min_ms": times[0], "runs": runs, "threads": threads}


def paired_latency(predictor, reference, image, rounds: int = 5, runs: int = 20, threads: int = 2) -> dict:
    """``measure_latency`` of ``predictor`` and ``reference`` in turn, ``rounds`` times: the ratio of each
    pair and its median. On a shared machine whose speed drifts, one absolute number can be off by half;
    two models measured back to back drift together, so their ratio is what a comparison should rest on."""
    pairs = []
    for _ in range(rounds):
        mine = measure_latency(predictor, image, runs=runs, threads=threads)["median_ms"]
        theirs = measure_latency(reference, image, runs=runs, threads=threads)["median_ms"]
        pairs.append((mine, theirs))
    ratios = [m / t for m, t in pairs]
    return {"rounds": rounds, "runs": runs, "threads": threads, "ms": [m for m, _ in pairs],
            "reference_ms": [t for _, t in pairs], "ratios": ratios, "median_ratio": statistics.median(ratios)}


def measure_throughput(model: torch.nn.Module, input_size: int, batch: int = 32, runs: int = 5, threads: int = 2) -> float:
    """Images per second of the bare model on a batch (no decoding)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(batch, 3, input_size, input_size)
        model.eval()
        with torch.inference_mode():
            model(x)
            tick = time.perf_counter()
            for _ in range(runs):
                model(x)
            return batch * runs / (time.perf_counter() - tick)
    finally:
        torch.set_num_threads(previous)


def file_megabytes(path: str | Path) -> float:
    return Path(path).stat().st_size / 1e6
