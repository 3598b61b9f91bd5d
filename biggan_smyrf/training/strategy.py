"""Data-parallel GAN training that communicates each network's gradients only when it steps.

Lightning's `DDPStrategy` wraps the whole LightningModule in one `DistributedDataParallel`. A GAN
step updates one network while the other is frozen, so with manual optimisation that needs
`find_unused_parameters=True`, and then every backward all-reduces every bucket of the module --
the frozen network's zero gradients included: 2-3x the traffic a GAN step needs.

`GANDDPStrategy` (registered as `gan_ddp`, and as `ddp` once this module is imported) is Lightning's
DDP strategy with one change: the LightningModule names the networks its optimisers step
(`trained_networks`, e.g. `("G", "D")`), and each gets a `DistributedDataParallel` of its own, as
StudioGAN wraps G and D apart. A step runs the network it updates through its wrapper (the module's
`trained(name, sync)`), so the backward all-reduces exactly that network's gradients, once, in
DDP's buckets overlapped with the backward, and no graph is searched for unused parameters; the
other network runs unwrapped (frozen, or under no_grad) and communicates nothing. `sync=False`
(accumulation micro-steps before the last) is DDP's `no_sync`. Per G iteration that is
`num_d_steps * |D| + |G|` floats, the minimum.

Everything else is Lightning's DDP: process launch and rendezvous, distributed samplers,
SyncBatchNorm (`trainer.sync_batchnorm`; CUDA only), `all_gather` for metrics, rank-0 checkpoint
writes. The wrappers are not submodules of the LightningModule, so state-dict keys (and old
checkpoints) are unchanged. Buffers are not broadcast at every forward (DDP's default, which
Lightning's manual optimisation skips anyway): spectral norm's u and v follow from the identical
weights on every rank, and only batch-norm running statistics depend on each rank's batch. After
each optimiser step the stepped network's BN statistics are broadcast from rank 0 once (G_ema
averages them, so every rank keeps the same G_ema): 2 floats per channel of G's BN layers per G
iteration, none with SyncBatchNorm.
"""
from __future__ import annotations

import inspect
import io
import os
import threading
from datetime import timedelta
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from lightning_fabric.plugins.environments import LightningEnvironment
from pytorch_lightning.overrides.distributed import _register_ddp_comm_hook, _sync_module_states
from lightning_fabric.utilities import move_data_to_device
from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry, XLAStrategy
from pytorch_lightning.strategies.launchers.xla import _XLALauncher
from torch import nn
from torch.nn.parallel import DistributedDataParallel

NAME = "gan_ddp"
BUFFER_BUCKET_BYTES = 250 * 2**20  # as DDP broadcasts module states
# How long the processes wait for each other to start (then: an error saying what to check); the
# collectives afterwards keep Lightning's timeout (30 min: rank 0 may compute real statistics while
# the others wait).
RENDEZVOUS_TIMEOUT_S = 300.0

# No per-forward buffer broadcast (newer torch renames `broadcast_buffers`), and no second broadcast
# of the states `_sync_module_states` has just sent (`init_sync`, where torch has it).
_DDP_ARGS = inspect.signature(DistributedDataParallel.__init__).parameters
WRAPPER_DEFAULTS = {
    "forward_sync_buffers" if "forward_sync_buffers" in _DDP_ARGS else "broadcast_buffers": False,
    **({"init_sync": False} if "init_sync" in _DDP_ARGS else {}),
}


class GANDDPStrategy(DDPStrategy):
    """DDP with one `DistributedDataParallel` per trained network of the LightningModule.

    A LightningModule without `trained_networks` is wrapped as Lightning's DDPStrategy wraps it, so
    the name `ddp` keeps its meaning for any other module. Keyword arguments go to each
    `DistributedDataParallel` (e.g. `bucket_cap_mb`, `gradient_as_bucket_view`, `static_graph`).
    """

    strategy_name = NAME

    def __init__(self, *args: Any, rendezvous_timeout: float = RENDEZVOUS_TIMEOUT_S, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rendezvous_timeout = timedelta(seconds=rendezvous_timeout)
        self.replicas: dict[str, DistributedDataParallel] = {}
        self._stepped_by: dict[int, str] = {}  # id(optimizer) -> the network it steps

    def _configure_launcher(self) -> None:
        check_launch(self.cluster_environment, self.num_nodes)  # before any process starts
        super()._configure_launcher()

    def setup_distributed(self) -> None:
        """Lightning's, with the rendezvous bounded by `rendezvous_timeout` and its failure explained."""
        collectives, self._timeout = self._timeout, min(self._timeout or self.rendezvous_timeout, self.rendezvous_timeout)
        try:
            super().setup_distributed()
        except (RuntimeError, dist.DistError) as error:
            raise TimeoutError(rendezvous_failure(self, error)) from error
        finally:
            self._timeout = collectives
        if collectives is not None:
            dist.distributed_c10d._get_default_store().set_timeout(collectives)
            set_timeout = getattr(dist, "set_timeout", None) or dist.distributed_c10d._set_pg_timeout
            set_timeout(collectives, dist.group.WORLD)

    def setup(self, trainer) -> None:
        if self._layer_sync is not None and self.root_device.type == "cpu":
            # torch's SyncBatchNorm runs on GPUs only; it would fail in the first training step.
            raise ValueError("--trainer.sync_batchnorm true needs GPUs (torch's SyncBatchNorm); on the CPU leave it off")
        super().setup(trainer)

    @staticmethod
    def networks_of(module: nn.Module) -> dict[str, nn.Module]:
        return {name: getattr(module, name) for name in getattr(module, "trained_networks", ())}

    def configure_ddp(self) -> None:
        module = self.lightning_module
        networks = self.networks_of(module)
        if not networks:
            return super().configure_ddp()
        # Once for the whole module (G_ema and fixed buffers included), as DDP would at wrapping.
        _sync_module_states(module)
        kwargs = {**WRAPPER_DEFAULTS, **self._ddp_kwargs}
        self.replicas = {
            name: DistributedDataParallel(net, device_ids=self.determine_ddp_device_ids(), **kwargs)
            for name, net in networks.items()
        }
        if self.root_device.type == "cuda":  # as Lightning: DDP communication hooks need NCCL
            for replica in self.replicas.values():
                _register_ddp_comm_hook(replica, self._ddp_comm_state, self._ddp_comm_hook, self._ddp_comm_wrapper)
        module.replicas = self.replicas

    def setup_optimizers(self, trainer) -> None:
        super().setup_optimizers(trainer)
        owners = {id(p): name for name, net in self.networks_of(self.lightning_module).items() for p in net.parameters()}
        self._stepped_by = {}
        for optimizer in self.optimizers:
            names = {owners.get(id(p)) for group in optimizer.param_groups for p in group["params"]}
            if len(names) != 1 or None in names:
                if self.replicas:
                    raise ValueError(
                        f"{NAME}: each optimiser must step exactly one of the module's trained_networks "
                        f"{sorted(self.replicas)}; one steps parameters of {sorted(map(str, names))}"
                    )
                continue
            self._stepped_by[id(optimizer)] = names.pop()

    def optimizer_step(self, optimizer, closure: Callable[[], Any], model=None, **kwargs: Any) -> Any:
        output = super().optimizer_step(optimizer, closure, model, **kwargs)
        name = self._stepped_by.get(id(getattr(optimizer, "_optimizer", optimizer)))
        if name is not None and self.replicas and self._layer_sync is None:
            align_batch_statistics(self.replicas[name].module)
        return output

    def on_exception(self, exception: BaseException) -> None:
        if not self.replicas:
            super().on_exception(exception)

    def teardown(self) -> None:
        module = self.lightning_module
        if module is not None and self.replicas:
            module.replicas = {}
        self.replicas = {}
        super().teardown()


class GANXLAStrategy(XLAStrategy):
    """Lightning's XLA strategy (TPU; PJRT's CPU device for checks), GAN-aware where it matters.

    Gradients: Lightning's XLA precision plugin all-reduces, at each optimiser step, the gradients of
    that optimiser's parameters (`xm.reduce_gradients`): the stepped network's, once, in one
    all-reduce. That is already the minimum, so it is kept as it is.

    Added, as `gan_ddp` does: after each step of a network its batch-norm running statistics are
    broadcast from replica 0 (they depend on each replica's batch, and G_ema averages them), and
    replica r > 0 draws its z and labels from its own XLA random stream. Registered as `gan_xla`
    and as `xla`, which Lightning picks for `--trainer.accelerator tpu` with several devices.

    Several XLA devices of one process (PJRT's CPU device with CPU_NUM_DEVICES > 1, whose replicas
    are threads) get two more things, without which their first all-reduce aborts the process
    (XLA's in-process collectives wait at most 10 s for every replica):
      - replicas launch each graph in lockstep (`lockstep_graph_launches`): replicas that trace the
        same graph at the same time would each compile it, and XLA keys an all-reduce by its
        compiled module, so their collectives would never meet;
      - torch_xla's thread pool gets a thread per replica at least (XLA_THREAD_POOL_SIZE; by default
        one per core): a replica blocked in an all-reduce holds its thread until all have arrived;
      - no buffer donation (XLA_ENABLE_PARAM_ALIASING=0): the launch of a graph that updates
        tensors in place releases their donated buffers, which waits until the graph has run, so
        the first replica to launch would wait inside its launch for the others' all-reduce.
    """

    strategy_name = "gan_xla"

    def __init__(self, *args: Any, sync_module_states: bool = False, **kwargs: Any):
        # No broadcast of the weights at start: every replica unpickles the one module the launcher
        # sent, so they start identical.
        super().__init__(*args, sync_module_states=sync_module_states, **kwargs)
        self._stepped_by: dict[int, str] = {}
        in_process = int(os.environ.get("CPU_NUM_DEVICES", "1")) if os.environ.get("PJRT_DEVICE") == "CPU" else 1
        if in_process > 1:  # read by torch_xla when its runtime starts, in the launched process
            os.environ.setdefault("XLA_THREAD_POOL_SIZE", str(max(2 * in_process, os.cpu_count() or 1)))
            # A graph that updates tensors in place (an optimiser step) donates their old buffers, and
            # releasing a donated buffer waits until the graph has run -- inside the launch, so the
            # replica launching first would wait there for the others' all-reduce while they wait for
            # it to launch. Without donation a launch returns at once (the cost: the old and new
            # weights coexist during a step).
            os.environ.setdefault("XLA_ENABLE_PARAM_ALIASING", "0")

    def setup_environment(self) -> None:
        super().setup_environment()
        import torch_xla.runtime as xr

        replicas = xr.addressable_device_count()
        if replicas > 1:
            lockstep_graph_launches(replicas)

    def setup(self, trainer) -> None:
        super().setup(trainer)
        import torch_xla.core.xla_model as xm

        if self.global_rank > 0:  # rank 0 keeps the stream: one device draws what rank 0 of several draws
            device = self.root_device
            xm.set_rng_state(xm.get_rng_state(device) + self.global_rank, device)
        networks = GANDDPStrategy.networks_of(self.lightning_module)
        owners = {id(p): name for name, net in networks.items() for p in net.parameters()}
        self._stepped_by = {}
        for optimizer in self.optimizers:
            names = {owners.get(id(p)) for group in optimizer.param_groups for p in group["params"]}
            if len(names) == 1 and None not in names:
                self._stepped_by[id(optimizer)] = names.pop()

    # Lightning's broadcast and all_gather read their collective's result on the host, which runs
    # its graph outside `torch_xla.sync`; here the graph is launched by `torch_xla.sync` first, so
    # in-process replicas launch it in lockstep too.
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not self._launched:
            return obj
        import torch_xla
        import torch_xla.core.xla_model as xm

        tensor = obj if isinstance(obj, torch.Tensor) else None
        if tensor is None:
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            data = torch.tensor(bytearray(buffer.getbuffer()), dtype=torch.float).to(self.root_device)
        else:
            data = (tensor.unsqueeze(0) if tensor.dim() == 0 else tensor).to(self.root_device)
        xm.collective_broadcast([data], root_ordinal=src)
        torch_xla.sync()
        if tensor is None:
            return torch.load(io.BytesIO(data.cpu().byte().numpy()))
        return data.to(tensor.device)

    # Barrier and reduce as one XLA all-reduce: Lightning's go through `xm.rendezvous`, whose
    # all-gather is, on PJRT's CPU device, an all-reduce over a graph that differs per replica (its
    # padding depends on the ordinal), so in-process replicas compile different programs whose
    # collectives never meet.
    def _summed(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch_xla
        import torch_xla.core.xla_model as xm

        total = xm.all_reduce(xm.REDUCE_SUM, tensor.detach().to(self.root_device, torch.float32))
        torch_xla.sync()
        return total

    def barrier(self, name: Optional[str] = None, *args: Any, **kwargs: Any) -> None:
        if self._launched:
            self._summed(torch.zeros(1)).cpu()  # returns once every replica has reached it

    def reduce(self, output: Any, group: Optional[Any] = None, reduce_op: Optional[Any] = "mean") -> torch.Tensor:
        op = str(getattr(reduce_op, "name", reduce_op)).lower()
        if op not in ("sum", "mean", "avg", "reduceop.sum"):
            raise ValueError(f"{type(self).__name__}.reduce supports sum and mean, got {reduce_op}")
        tensor = output if isinstance(output, torch.Tensor) else torch.tensor(output)
        if not self._launched:
            return tensor
        total = self._summed(tensor).to(tensor.device)
        return total / self.world_size if op in ("mean", "avg") else total

    def _configure_launcher(self) -> None:
        self._launcher = _GANXLALauncher(self)

    def all_gather(self, tensor: Any, group: Optional[Any] = None, sync_grads: bool = False) -> Any:
        if not self._launched or not isinstance(tensor, torch.Tensor):
            return super().all_gather(tensor, group, sync_grads)
        import torch_xla

        gathered = super().all_gather(tensor.to(self.root_device), group, sync_grads)
        torch_xla.sync()
        return gathered.to(tensor.device)

    def optimizer_step(self, optimizer, closure: Callable[[], Any], model=None, **kwargs: Any) -> Any:
        output = super().optimizer_step(optimizer, closure, model, **kwargs)
        name = self._stepped_by.get(id(getattr(optimizer, "_optimizer", optimizer)))
        if name is not None and self.world_size > 1:
            buffers = batch_statistics(getattr(self.lightning_module, name))
            if buffers:
                import torch_xla.core.xla_model as xm

                xm.collective_broadcast(buffers)  # joins the next graph
        return output

    def on_train_end(self) -> None:
        # The last step's broadcast is still pending: launched by a sync of every replica, not by
        # the first read of a weight (a checkpoint, the move to the CPU), which would run it alone.
        if self._launched and self.world_size > 1:
            import torch_xla

            torch_xla.sync()
        super().on_train_end()


class _GANXLALauncher(_XLALauncher):
    """Lightning's XLA launcher, whose replicas wait for each other at the end through the
    strategy's barrier instead of `xm.rendezvous` (see GANXLAStrategy.barrier)."""

    def _wrapping_function(self, process_idx, trainer, function, args, kwargs, return_queue, global_states=None):
        import copy

        import torch_xla.core.xla_model as xm

        if len(xm.get_xla_supported_devices()) > 1:  # replicas as threads: each its own copy
            trainer, function, args, kwargs = copy.deepcopy((trainer, function, args, kwargs))
        results = function(*args, **kwargs)
        if trainer is not None:
            results = self._collect_rank_zero_results(trainer, results)
        if self._strategy.local_rank == 0:
            return_queue.put(move_data_to_device(results, "cpu"))
        self._strategy._launched = True  # the strategy's teardown has reset it; the replicas still run
        self._strategy.barrier("end-process")
        self._strategy._launched = False


_LOCKSTEP = threading.Lock()


def lockstep_graph_launches(replicas: int, timeout: float = RENDEZVOUS_TIMEOUT_S) -> None:
    """Make the `replicas` threads of this process launch their graphs (`torch_xla.sync`, which
    `xm.mark_step`, torch_xla's data loader and its rendezvous call) together and one at a time.

    Each launch waits until every replica has traced its graph (a barrier), then launches under a
    lock: the first compiles, the others find its executable in torch_xla's cache and launch the
    same program, so their all-reduces meet, within milliseconds of each other; then it waits until
    all have launched (a replica waiting for its graph's result may hold the GIL, which the others
    need to launch), and only then does the rest of torch_xla's sync, whose release of the
    all-reduce token waits for the graph to finish. Replicas must launch
    the same number of graphs (data-parallel code does); a replica that does not arrive within
    `timeout` seconds breaks the barrier with an error instead of a hang. Once per process."""
    import torch_xla

    with _LOCKSTEP:
        if getattr(torch_xla.sync, "lockstep_replicas", None) is not None:
            return
        launch, barrier, one_at_a_time = torch_xla.sync, threading.Barrier(replicas, timeout=timeout), threading.Lock()

        def sync(wait: bool = False, reset_scope: bool = True) -> None:
            barrier.wait()
            with one_at_a_time:  # only the launch: the rest of `sync` may wait for the graph to finish
                torch_xla._XLAC._xla_step_marker(torch_xla._XLAC._xla_get_default_device(), [], wait=False,
                                                 reset_scope=reset_scope)
            # No replica goes on to wait for its graph (which may hold the GIL) before all have launched.
            barrier.wait()
            # The rest of torch_xla's sync (nothing is left to launch): step closures, metrics, and the
            # release of the all-reduce token, whose buffer's release waits until the graph has run.
            launch(wait, reset_scope)

        sync.lockstep_replicas = replicas
        torch_xla.sync = sync


def batch_statistics(net: nn.Module) -> list:
    return [b for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]


def align_batch_statistics(net: nn.Module) -> None:
    """`net`'s batch-norm running statistics as rank 0 has them, in one coalesced broadcast."""
    buffers = batch_statistics(net)
    if buffers:
        dist._broadcast_coalesced(dist.group.WORLD, buffers, BUFFER_BUCKET_BYTES, 0)


def check_launch(environment, num_nodes: int) -> None:
    """Several nodes need a launcher that tells each process where it is: torchrun or SLURM set the
    environment, by hand MASTER_ADDR, MASTER_PORT and NODE_RANK on every node. Without it every
    node would believe it is node 0 and wait for the others until the rendezvous times out."""
    if num_nodes > 1 and type(environment) is LightningEnvironment and "NODE_RANK" not in os.environ:
        raise ValueError(
            f"--trainer.num_nodes {num_nodes}: start the run on every node with torchrun (--nnodes {num_nodes} "
            f"--rdzv-endpoint HOST:PORT) or srun under SLURM, or set MASTER_ADDR, MASTER_PORT and NODE_RANK on each "
            f"node (docs/multi-gpu.md)"
        )


def rendezvous_failure(strategy: GANDDPStrategy, error: BaseException) -> str:
    env = strategy.cluster_environment
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    return (
        f"rank {strategy.global_rank} of {strategy.world_size} could not meet the other processes at {where} within "
        f"{strategy.rendezvous_timeout.total_seconds():.0f} s ({type(error).__name__}). Check that every node started "
        f"the same command, that --trainer.num_nodes ({strategy.num_nodes}) x --trainer.devices "
        f"({strategy.num_processes}) is the number of processes started, that {where} is the first node's address "
        f"and reachable from every node (port open), and that each node has its own node rank "
        f"({type(env).__name__}; docs/multi-gpu.md)"
    )


def register(registry=StrategyRegistry) -> None:
    """`gan_ddp`, and `ddp` (which Lightning also picks for `strategy: auto` on several devices);
    `gan_xla`, and `xla` (Lightning's pick for several TPU devices)."""
    for name in (NAME, "ddp"):
        registry.register(
            name, GANDDPStrategy, override=True, start_method="popen",
            description="DDP with one DistributedDataParallel per trained network (biggan_smyrf)",
        )
    for name in (GANXLAStrategy.strategy_name, "xla"):
        registry.register(
            name, GANXLAStrategy, override=True,
            description="XLA data parallelism, batch-norm statistics kept equal on every replica (biggan_smyrf)",
        )


def check_strategy(strategy) -> Optional[str]:
    """A warning for Lightning's own DDP on a GAN module, None otherwise. With
    `find_unused_parameters=True` it trains correctly but all-reduces both networks' gradients in
    every backward; without it the first step fails deep inside DDP, so that is refused here."""
    if not isinstance(strategy, DDPStrategy) or isinstance(strategy, (GANDDPStrategy, XLAStrategy)):
        return None  # XLAStrategy wraps nothing: each optimiser step reduces its own parameters' gradients
    if strategy._ddp_kwargs.get("find_unused_parameters"):
        return (
            f"{type(strategy).__name__}(find_unused_parameters=True) all-reduces G's and D's gradients in every "
            f"backward (2-3x the traffic of a GAN step); --trainer.strategy ddp ({NAME}) reduces only the stepped network's"
        )
    raise ValueError(
        "this Lightning DDP strategy wraps G and D in one DistributedDataParallel, which fails with two optimisers "
        f"under manual optimisation: use --trainer.strategy ddp (which is {NAME})"
    )
