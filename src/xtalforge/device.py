"""Torch device names, checked once with a clear error (a CUDA request on a CPU-only build fails here, not inside
``torch.load``), and the process pool torch work is spread over on CPU."""

from __future__ import annotations

import re

from xtalforge.errors import XtalforgeError

#: Device names the CLI accepts (checked without importing torch): cpu, cuda, cuda:N, mps.
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def check_device_name(device: str) -> str:
    """``device`` if it names a torch device xtalforge can run on, else an error naming it."""
    if not DEVICE_PATTERN.match(str(device)):
        raise XtalforgeError(f"unknown device '{device}' (use cpu, cuda, cuda:N or mps)")
    return str(device)


def torch_device(device):
    """The ``torch.device`` for ``device`` (``"cpu"``, ``"cuda:0"``, a ``torch.device``), after checking that this
    machine has it."""
    import torch

    dev = device if isinstance(device, torch.device) else torch.device(check_device_name(device))
    if dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError, AttributeError):
            raise XtalforgeError(f"device '{device}' is not available on this machine (torch {torch.__version__}); "
                                 "use --device cpu") from None
    return dev


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def torch_process_pool(workers: int):
    """A ``ProcessPoolExecutor`` of ``workers`` processes for torch work, one torch thread each (so that they share
    the cores instead of oversubscribing them). Spawned, not forked: a forked child inherits the parent's torch
    thread pool and can hang in it. Work sent to it must be picklable (module-level functions)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_torch_thread)
