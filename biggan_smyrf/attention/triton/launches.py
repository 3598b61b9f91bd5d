"""The one door every Triton launch of the attention kernels goes through.

`launch(kernel, grid)(*args, **options)` is `kernel[grid](*args, **options)`, except that
- on meta tensors nothing is launched (there is nothing to compute, as aten's meta kernels compute
  nothing): a route then runs its whole host side -- shapes, loops, allocations, every aten op --
  without a device. That is how its host cost is counted (benchmarks/host_cost.py);
- inside `observe_launches(record)` every launch is first reported as `record(name, grid)`, and
  with `run=False` not made at all (the host side timed without the kernels' work).
Cost: one global read per launch. A module-level hook rather than a context variable because the
backward runs on autograd's own threads.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

_observer: Optional[tuple[Callable[[str, tuple], None], bool]] = None


def launch(kernel, grid: tuple):
    """`kernel[grid]`, through the observer if there is one; its arguments' first is a tensor."""
    observer = _observer

    def run(*args, **options):
        if observer is not None:
            record, execute = observer
            record(kernel_name(kernel), grid)
            if not execute:
                return
        if args[0].device.type != "meta":
            kernel[grid](*args, **options)

    return run


def kernel_name(kernel) -> str:
    """module.function of a @triton.jit kernel (compiled or interpreted)."""
    fn = getattr(kernel, "fn", kernel)
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


@contextmanager
def observe_launches(record: Callable[[str, tuple], None], run: bool = True):
    """Report every launch made inside to `record(name, grid)`; run=False skips the launches."""
    global _observer
    outer, _observer = _observer, (record, run)
    try:
        yield
    finally:
        _observer = outer
