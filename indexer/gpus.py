"""``clipdex worker --gpus all|0,2``: one embed worker process per GPU, each seeing only its own
device (``CUDA_VISIBLE_DEVICES``), so a machine with eight GPUs runs eight models side by side
instead of one. The parent only supervises: it starts the workers, restarts one that dies, and
passes SIGTERM / SIGINT on so each finishes its batch (Celery's warm shutdown) before it exits.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

RESTART_AFTER = 5.0   # seconds before a worker that died is started again


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA numbers them (none without CUDA)."""
    try:
        import torch

        return [str(n) for n in range(torch.cuda.device_count())]
    except Exception:   # no torch build with CUDA, no driver
        return []


def chosen_gpus(value: str | None) -> list[str]:
    """The GPUs ``--gpus`` names: ``all`` (the default) or a comma list of device numbers."""
    if value is None or value == "all":
        return visible_gpus()
    gpus = [part.strip() for part in value.split(",") if part.strip()]
    if not gpus or not all(part.isdigit() for part in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus takes 'all' or device numbers such as 0,2; got {value!r}")
    return gpus


def per_gpu_args(celery_args: tuple[str, ...], gpu: str) -> list[str]:
    """The worker's Celery arguments with a node name of its own (``worker@%h`` becomes
    ``worker-gpu1@%h``: two workers of one host must not share a name)."""
    args = list(celery_args)
    for i, arg in enumerate(args):
        if arg in ("-n", "--hostname") and i + 1 < len(args):
            args[i + 1] = _suffixed(args[i + 1], gpu)
            return args
        match = re.match(r"^(--hostname=|-n)(.+)$", arg)
        if match:
            args[i] = match.group(1) + _suffixed(match.group(2), gpu)
            return args
    return [*args, "--hostname", f"embed-gpu{gpu}@%h"]


def _suffixed(name: str, gpu: str) -> str:
    node, at, host = name.partition("@")
    return f"{node}-gpu{gpu}{at}{host}"


def supervise(settings, gpus: list[str], queues: str, celery_args: tuple[str, ...], out=sys.stderr) -> int:
    """Runs one worker per GPU until SIGTERM or SIGINT; returns the exit status. Each child is
    `clipdex worker --gpus 0` with only its GPU visible, so it uses device 0 of what it sees."""
    stopping = threading.Event()
    procs: dict[str, subprocess.Popen] = {}

    def start(gpu: str) -> subprocess.Popen:
        env = {**settings.child_environ(), "CUDA_VISIBLE_DEVICES": gpu}
        argv = [sys.executable, "-m", "clipdex.cli", "worker", "--gpus", "0", "--queues", queues,
                *per_gpu_args(celery_args, gpu)]
        print(f"clipdex worker: GPU {gpu}: {' '.join(argv[3:])}", file=out, flush=True)
        return subprocess.Popen(argv, env=env, start_new_session=True)

    def stop(*_):
        stopping.set()
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for gpu in gpus:
            procs[gpu] = start(gpu)
        died: dict[str, float] = {}
        while not stopping.is_set():
            for gpu, proc in procs.items():
                if proc.poll() is not None and gpu not in died:
                    print(f"clipdex worker: the worker on GPU {gpu} exited ({proc.returncode}); "
                          f"starting it again in {RESTART_AFTER:g} s", file=out, flush=True)
                    died[gpu] = time.monotonic()
            for gpu, when in list(died.items()):
                if time.monotonic() - when >= RESTART_AFTER and not stopping.is_set():
                    procs[gpu] = start(gpu)
                    del died[gpu]
            stopping.wait(0.5)
        for proc in procs.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
