"""Kernel launches of one attention forward+backward on CUDA, counted on a machine without a GPU.

The call runs on fake CUDA tensors (`FakeTensorMode`: shapes, dtypes and devices, no data), so its
code takes the CUDA route (SMYRF: the permuted Triton kernels) at the real sizes in about a second.
A dispatch mode counts the aten ops that would launch a kernel on the device (not views, bare
allocations or device queries); Triton launches are counted instead of compiled and launched. The
CUDA autograd engine needs a CUDA context, so the backward runs node by node here, as the engine
would (broadcast gradients summed to their input's shape, accumulation by addition).
Cost: one call's host work, O(ops).
"""
from __future__ import annotations

import collections
from contextlib import contextmanager

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Ops that launch nothing: bare allocations, aliases and metadata.
NO_KERNEL = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "detach", "alias",
             "lift_fresh", "set_", "resize_", "device", "is_pinned", "_unsafe_view", "_reshape_alias"}


class LaunchCounter(TorchDispatchMode):
    """Counts CUDA-side aten ops that launch a kernel (`launches`, by op name). Pinning host memory
    (which fake tensors cannot) is passed through: it is host work."""

    def __init__(self):
        super().__init__()
        self.launches = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "_pin_memory":
            return args[0]
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cuda" for t in tensors) and not func.is_view and name not in NO_KERNEL:
            self.launches[name] += 1
        return out


@contextmanager
def triton_launches_counted():
    """Triton's launches counted instead of run (yields a one-item list); and the tensor arguments of
    every custom autograd Function recorded (what the node-by-node backward needs)."""
    import triton.runtime.jit as jit

    launches, tensor_args = [0], {}
    run, apply = jit.JITFunction.run, torch.autograd.Function.__dict__["apply"]

    def counted(self, *args, **kwargs):
        launches[0] += 1

    def recording(cls, *args, **kwargs):
        out = apply.__get__(None, cls)(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        if isinstance(first, torch.Tensor) and first.grad_fn is not None:
            tensor_args[first.grad_fn] = [isinstance(a, torch.Tensor) for a in args]
        return out

    jit.JITFunction.run, torch.autograd.Function.apply = counted, classmethod(recording)
    try:
        yield launches, tensor_args
    finally:
        jit.JITFunction.run, torch.autograd.Function.apply = run, apply


def backward(out: torch.Tensor, grad: torch.Tensor, tensor_args: dict) -> None:
    """out's autograd graph run node by node in topological order, as the engine runs it."""
    order, seen = [], set()

    def visit(node):
        if node is not None and node not in seen:
            seen.add(node)
            for child, _ in node.next_functions:
                visit(child)
            order.append(node)

    visit(out.grad_fn)
    grads = {out.grad_fn: [grad]}
    for node in reversed(order):
        inputs = grads.pop(node, None)
        if inputs is None or type(node).__name__ == "AccumulateGrad":
            continue
        outputs = (node.apply if hasattr(node, "apply") else node)(*inputs[:len(node._input_metadata)])
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        if node in tensor_args:  # a custom Function returns a gradient for every argument, tensor or not
            outputs = tuple(g for g, is_tensor in zip(outputs, tensor_args[node]) if is_tensor)
        for (child, slot), g in zip(node.next_functions, outputs):
            if child is None or g is None:
                continue
            meta = child._input_metadata[slot]
            if tuple(g.shape) != tuple(meta.shape):
                g = g.sum_to_size(meta.shape)
            g = g.to(meta.dtype)
            pending = grads.setdefault(child, [None] * len(child._input_metadata))
            pending[slot] = g if pending[slot] is None else pending[slot] + g


def count_launches(attention, n: int, batch: int, dtype: torch.dtype, d_qk: int = 12, d_v: int = 48) -> dict:
    """{"aten": kernel-launching aten ops, "triton": Triton launches, "ops": by name} of
    attention(q, k, v) and its backward at n queries and n / 4 keys, on CUDA."""
    with FakeTensorMode(allow_non_fake_inputs=True), triton_launches_counted() as (triton, tensor_args):
        q, k, v = (torch.empty(batch, t, d, device="cuda", dtype=dtype).requires_grad_()
                   for t, d in ((n, d_qk), (n // 4, d_qk), (n // 4, d_v)))
        counter = LaunchCounter()
        with counter:
            out = attention(q, k, v)
        grad = torch.ones_like(out)  # the caller's gradient, not the call's work
        with counter:
            backward(out, grad, tensor_args)
    return {"aten": sum(counter.launches.values()), "triton": triton[0], "ops": dict(counter.launches)}
