"""``MeshHook``: a DDP communication hook that carries out a collective plan.

One hook object (the ``state`` DDP passes back on every bucket) holds the current plan and
everything needed to run it:

- **flat** all-reduce over the whole group (``ring``, ``tree``, ``halving_doubling``); on NCCL
  ring and tree run on communicators of their own, created once at start with ``NCCL_ALGO``
  set to ``Ring`` / ``Tree`` (:mod:`.nccl_groups`);
- **hierarchical** all-reduce over intra-node and inter-node subgroups created once, at
  start: intra-node reduce-scatter, inter-node all-reduce of the shard, intra-node
  all-gather; and the **leader** variant (reduce to a leader per node, all-reduce among
  leaders, broadcast);
- a **fusion window**: buckets are held (their futures left pending) until the held bytes
  reach the window or the step's last bucket arrives, then one collective runs on their
  concatenation;
- **compression**: fp16/bf16 (cast, divide by the world size, all-reduce, cast back -- the
  order of torch's ``fp16_compress_hook``, but composable with fusion and two-level
  algorithms) and PowerSGD, which is torch's own ``powerSGD_hook`` (per bucket, flat).

**Agreement.** At step 0 and every ``replan_every`` steps the ranks run one small
``all_gather``: rank 0's row carries the plan (version, algorithm, compression, window), every
row carries that rank's busy and collective time. All ranks adopt rank 0's plan at that same
step, before the step's first collective, so a step never mixes plans. Rank 0's plan is, in
order: ``plan_provider``'s (a fixed plan, a test's schedule); the coordinator's, under an
agent that hands it over in ``$INFERMESH_PLAN_FILE``, when this hook can run it; else its
own :class:`~infermesh.train.planning.Replanner`'s, fed with the measured collective times.
Rank 0 sends the links it fitted to the agent, so the coordinator plans with them.

**Telemetry.** Every collective is timed (bytes, seconds, algorithm, compression, group) into
:attr:`MeshHook.records` and Prometheus (``infermesh_collective_seconds``,
``infermesh_collective_bytes_total``): by the host clock on CPU, by CUDA events on a GPU (an
NCCL collective returns to the host before it runs), read when the next step begins (and by
:meth:`MeshHook.close` after the last). The hook calls the progress heartbeat once per step
and detects stragglers (:mod:`.stragglers`).

**Emulation.** gloo has one all-reduce algorithm (a ring) and no async
``reduce_scatter_tensor``. NCCL reads ``NCCL_ALGO`` when it initialises each communicator, so
the hook applies ring and tree through per-algorithm groups; NCCL has no halving-doubling, and
a user's process-wide ``NCCL_ALGO`` is respected (then no per-algorithm group is created).
:func:`emulation_notes` (and :meth:`MeshHook.emulation_notes`, for one hook) says which parts
of a plan are applied and which are only recorded; records of an emulated collective have
``emulated=True``.

Invariants DDP needs: the hook divides by the world size itself, every rank runs the same
collectives in the same order (the plan and the buckets are the same on every rank), and each
bucket's future resolves to a tensor of the bucket's size.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

from infermesh.core.errors import UsageError
from infermesh.obs import metrics
from infermesh.signal import collective
from infermesh.signal.collective import CollectiveRecord
from infermesh.train.heartbeat import heartbeat
from infermesh.train.hooks.nccl_groups import NCCL_ALGO, NCCL_ALGO_ENV, build_algorithm_groups
from infermesh.train.hooks.stragglers import StragglerDetector, StragglerEvent
from infermesh.train.plan_file import PLAN_FILE_ENV, PlanFile
from infermesh.train.planning import (
    DEFAULT_PROFILE,
    PROFILE_ENV,
    Algorithm,
    Backend,
    CollectivePlan,
    Compression,
    JobShape,
    PlanChoice,
    PlannerConfig,
    Replanner,
    format_bytes,
    link_profile,
    parse_choice,
    parse_plan_choice,
    step_time,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CollectiveRecord",
    "MeshHook",
    "MeshHookConfig",
    "emulation_notes",
    "mesh_comm_hook",
    "prepare",
]

PLAN_ENV = "INFERMESH_COLLECTIVE_PLAN"
PlanProvider = Callable[[int], PlanChoice | None]
"""Called on rank 0 at each agreement step with the step number; None keeps the plan."""

_SECONDS = metrics.histogram(
    "infermesh_collective_seconds",
    "Duration of each gradient collective, by algorithm (strategy label).",
    ("job", "rank", "strategy"),
    buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5),
)
_BYTES = metrics.counter(
    "infermesh_collective_bytes",
    "Bytes sent into gradient collectives (after compression), by algorithm.",
    ("job", "rank", "strategy"),
)
_PLAN_VERSION = metrics.gauge(
    "infermesh_collective_plan_version", "Version of the collective plan in use.", ("job", "rank")
)
_STRAGGLER = metrics.gauge(
    "infermesh_straggler",
    "1 while the rank is reported as a straggler (busy time above the others'), else 0.",
    ("job", "rank"),
)

_ALGORITHMS = list(Algorithm)
_COMPRESSIONS = list(Compression)
_ROW = 6  # agreement row: version, algorithm, compression, fusion bytes, busy s, collective s


@dataclass
class MeshHookConfig:
    """Settings of the hook and of the planner it runs on rank 0."""

    replan_every: int = 50
    """Agree on a plan (and check for stragglers) every this many steps (K)."""

    gpus_per_node: int | None = None
    """Ranks per node for the two-level layout; default ``LOCAL_WORLD_SIZE`` (torchrun's)."""

    link_profile: str | None = None
    """Hardware profile of the cost model (``infermesh topo plan --help`` lists them);
    default ``$INFERMESH_LINK_PROFILE``, else ``cpu-loopback`` on gloo and
    ``h100-nvlink-400g`` on NCCL. The measured collectives calibrate its link figures as
    training runs (rank 0 re-fits them every ``replan_every`` steps)."""

    fixed_plan: str | None = None
    """Run this plan instead of planning: ``algorithm/compression[/window]``, e.g.
    ``hierarchical/none/4MB`` (benchmarks, debugging); default ``$INFERMESH_COLLECTIVE_PLAN``."""

    compressions: tuple[str, ...] = ("none",)
    """Compressions the planner may choose: none, fp16, bf16, powersgd."""

    algorithms: tuple[str, ...] | None = None
    """Algorithms the planner may choose; default those the backend applies
    (:attr:`~infermesh.train.planning.Backend.algorithms`)."""

    min_gain: float = 0.1
    """A new plan must be predicted at least this fraction faster to replace the current one."""

    explore_within: float = 0.2
    """A plan never run whose predicted time is within this fraction of the current plan's
    measured time is run for one window, then the faster measured one is kept (0: never)."""

    powersgd_rank: int = 4
    """PowerSGD's matrix approximation rank."""

    powersgd_start_step: int = 2
    """PowerSGD runs plain all-reduce for this many steps of its own first (torch's warm-up)."""

    straggler_factor: float = 1.5
    """A rank busier than this times the others' median ..."""

    straggler_windows: int = 3
    """... for this many agreement windows in a row is reported as a straggler."""

    job: str = ""
    """Job label of the metrics; default ``TORCHELASTIC_RUN_ID`` or ``local``."""

    history: int = 10_000
    """Collective records kept in memory."""

    def planner_config(self, backend: str) -> PlannerConfig:
        """The :class:`PlannerConfig` these settings describe (names checked here)."""
        if self.algorithms is None:
            algorithms = (Backend.GLOO if backend == "gloo" else Backend.NCCL).algorithms
        else:
            algorithms = tuple(parse_choice(Algorithm, a, "algorithm") for a in self.algorithms)
        compressions = tuple(parse_choice(Compression, c, "compression") for c in self.compressions)
        return PlannerConfig(
            algorithms=algorithms,
            compressions=compressions,
            min_gain=self.min_gain,
            replan_every=self.replan_every,
            explore_within=self.explore_within,
            powersgd_rank=self.powersgd_rank,
        )


def emulation_notes(
    backend: str,
    nccl_groups: Collection[Algorithm] = tuple(NCCL_ALGO),
    no_group_reason: str = "",
) -> list[str]:
    """Which parts of a plan the backend applies, and which are only recorded.

    On NCCL, ``nccl_groups`` are the algorithms that have a communicator of their own (by
    default ring and tree, as :class:`MeshHook` builds them); ``no_group_reason`` says why the
    others of :data:`~.nccl_groups.NCCL_ALGO` have none.
    """
    if backend == "gloo":
        return [
            "ring: gloo's all_reduce (a ring) -- applied",
            "tree, halving_doubling: gloo has no such all_reduce; run as gloo's ring and "
            "recorded as emulated",
            "hierarchical: intra-node reduce-scatter emulated by an intra-node all_reduce "
            "(gloo has no async reduce_scatter_tensor; the cost model prices that all_reduce); "
            "inter-node all-reduce and all-gather applied",
            "hierarchical_leader, fusion, fp16/bf16, powersgd: applied",
        ]
    if backend == "nccl":
        notes = []
        for algorithm, value in NCCL_ALGO.items():
            if algorithm in nccl_groups:
                notes.append(
                    f"{algorithm.value}: NCCL's all_reduce on a communicator created with "
                    f"NCCL_ALGO={value} -- applied"
                )
            else:
                notes.append(
                    f"{algorithm.value}: no communicator of its own ({no_group_reason}); run as "
                    "NCCL's all_reduce on the model's group and recorded as emulated"
                )
        return [
            *notes,
            "halving_doubling: NCCL has no such algorithm; run as NCCL's all_reduce on the "
            "model's group (NCCL's own choice) and recorded as emulated",
            "hierarchical (reduce_scatter_tensor), hierarchical_leader, fusion, fp16/bf16, "
            "powersgd: applied, on the model's group and the two-level subgroups",
        ]
    return [f"{backend}: every algorithm runs as the backend's all_reduce (recorded only)"]


class MeshHook:
    """The state of the mesh comm hook on one rank: plan, subgroups, timings, stragglers."""

    def __init__(
        self,
        job: JobShape,
        config: MeshHookConfig | None = None,
        *,
        plan_provider: PlanProvider | None = None,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | None = None,
    ) -> None:
        """``device``: this rank's GPU on NCCL (default: the current CUDA device); the
        per-algorithm communicators are created for it, so pass the gradients' device."""
        self.config = config = config or MeshHookConfig()
        self.pg = process_group
        self.rank = dist.get_rank(process_group)
        self.world = dist.get_world_size(process_group)
        self.backend = str(dist.get_backend(process_group))
        g = job.gpus_per_node
        if self.world % g or job.world != self.world:
            raise UsageError(
                f"gpus_per_node={g} does not divide the world of {self.world} ranks into nodes; "
                "set gpus_per_node to the ranks per node"
            )
        # the cost model prices what runs on this backend (gloo emulates some steps)
        self.job = job = replace(
            job, backend=Backend.GLOO if self.backend == "gloo" else Backend.NCCL
        )
        self.node, self.local_index = divmod(self.rank, g)
        profile = config.link_profile or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE[job.backend]
        self.links = link_profile(profile)
        self.planner_config = config.planner_config(self.backend)
        self.plan_provider = plan_provider
        self.cell_plans = (
            PlanFile(os.environ[PLAN_FILE_ENV])
            if self.rank == 0 and os.environ.get(PLAN_FILE_ENV)
            else None
        )
        """Rank 0 under an agent: the coordinator's plans for this job (see :meth:`_propose`)."""
        self._from_cell = 0  # version of the coordinator's plan in use (0: none)
        self._cell_refused = 0  # version of the coordinator's plan last found unusable
        self.replanner = Replanner(job, self.links, self.planner_config) if self.rank == 0 else None
        self.detector = StragglerDetector(
            self.world, config.straggler_factor, config.straggler_windows
        )
        self.stragglers: list[StragglerEvent] = []
        self.windows: deque[tuple[int, PlanChoice, list[float], list[float]]] = deque(maxlen=1000)
        """Per agreement window, at its end: ``(step, plan that ran, busy s/step per rank,
        collective s/step per rank)``."""
        self._records: deque[CollectiveRecord] = deque(maxlen=config.history)
        self._finished: deque[_Timing] = deque()  # collectives done, duration not yet read
        self.plans: list[tuple[int, int, PlanChoice]] = []
        """``(step, version, choice)`` of every plan this rank adopted."""

        self.step = 0
        self.version = 0
        self.choice: PlanChoice | None = None
        self._labels = {
            "job": config.job or os.environ.get("TORCHELASTIC_RUN_ID", "local"),
            "rank": str(self.rank),
        }
        self.signal = collective.sender_from_env(self._labels["job"], self.rank)
        """Sends every record to the local agent when ``INFERMESH_SIGNAL_IPC`` is set."""
        if self.signal is not None:  # the coordinator plans the job's collectives with it
            self.signal.shape = (job.grad_bytes, job.bucket_bytes, self.backend)
        self._intra: dist.ProcessGroup | None = None
        self._inter: dist.ProcessGroup | None = None
        if job.nodes > 1 and g > 1:
            if self.world != dist.get_world_size():
                raise UsageError(
                    f"the model's process group has {self.world} of {dist.get_world_size()} "
                    "ranks; the two-level layout needs the default group, or set "
                    f"gpus_per_node={self.world} for one flat group"
                )
            self._build_subgroups(job.nodes, g)
        self.algorithm_groups: dict[Algorithm, dist.ProcessGroup] = {}
        """On NCCL: the group of each algorithm whose communicator runs it (ring, tree)."""
        self.no_group_reason = ""
        """On NCCL: why an algorithm of ``NCCL_ALGO`` has no group of its own."""
        if self.backend == "nccl":
            if device is None:
                device = torch.device("cuda", torch.cuda.current_device())
            self._build_algorithm_groups(device)
        self._psgd: PowerSGDState | None = None
        self._pending: list[torch.Tensor] = []
        self._waiting: list[torch.futures.Future[torch.Tensor]] = []
        self._pending_bytes = 0
        self._new_step = True
        self._step_start: float | None = None
        self._step_comm = 0.0
        self._step_groups: dict[str, list[float]] = {}  # group -> [bytes, seconds, calls]
        self._window = [0.0, 0.0, 0]  # busy seconds, collective seconds, steps
        self._window_groups: dict[str, float] = {}  # group -> collective seconds

    # -- setup ----------------------------------------------------------------------------

    def _build_subgroups(self, nodes: int, g: int) -> None:
        """Create every intra-node and inter-node group once (all ranks, same order)."""
        for node in range(nodes):
            group = dist.new_group(list(range(node * g, (node + 1) * g)))
            if node == self.node:
                self._intra = group
        for local in range(g):
            group = dist.new_group([node * g + local for node in range(nodes)])
            if local == self.local_index:
                self._inter = group

    def _build_algorithm_groups(self, device: torch.device) -> None:
        """NCCL: one group per algorithm of ``NCCL_ALGO`` the planner may use (all ranks).

        Not when ``NCCL_ALGO`` is set for the process on any rank (every communicator follows
        it; the ranks agree first, as ``new_group`` must be called by all of them or none), nor
        when the model's group is not the whole world (``new_group`` is called by every rank
        of the default group, which would need the same groups on every rank).
        """
        user_algo = os.environ.get(NCCL_ALGO_ENV)
        flag = torch.tensor([0.0 if user_algo is None else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.pg)
        if flag.item() > 0:
            self.no_group_reason = (
                f"NCCL_ALGO={user_algo} is set for the process"
                if user_algo is not None
                else "NCCL_ALGO is set for another rank's process"
            )
            if self.rank == 0:
                logger.warning(
                    "%s: it decides every NCCL all-reduce, so the mesh hook creates no "
                    "per-algorithm communicators and records ring and tree as emulated; unset "
                    "it to let collective plans choose",
                    self.no_group_reason,
                )
            return
        if self.world != dist.get_world_size():
            self.no_group_reason = "the model's process group is not the default group"
            return
        self.no_group_reason = "not among the hook's algorithms"
        self.algorithm_groups = build_algorithm_groups(self.planner_config.algorithms, device)

    def emulation_notes(self) -> list[str]:
        """:func:`emulation_notes` for this hook's backend and communicators."""
        return emulation_notes(self.backend, self.algorithm_groups.keys(), self.no_group_reason)

    def _flat_group(self, algorithm: Algorithm) -> tuple[dist.ProcessGroup | None, bool]:
        """The group that runs a flat ``algorithm``, and whether it only emulates it."""
        if self.backend == "gloo":
            return self.pg, algorithm is not Algorithm.RING
        group = self.algorithm_groups.get(algorithm)
        if group is None:
            return self.pg, True
        return group, False

    def _emulates(self, algorithm: Algorithm) -> bool:
        """Whether this hook runs something else in place of ``algorithm`` (see the notes)."""
        if algorithm.two_level:
            if self.backend == "gloo":
                return algorithm is Algorithm.HIERARCHICAL
            return self.backend != "nccl"
        return self._flat_group(algorithm)[1]

    # -- the hook ---------------------------------------------------------------------------

    def on_bucket(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        """Handle one DDP bucket; return the future of its averaged gradients."""
        buffer = bucket.buffer()
        if self._new_step:
            self._new_step = False
            self._begin_step(buffer.device)
        choice = self.choice
        assert choice is not None  # set by the agreement at step 0
        last = bucket.is_last()
        if choice.compression is Compression.POWERSGD:
            fut = self._powersgd(bucket)
        else:
            self._pending.append(buffer)
            self._pending_bytes += buffer.numel() * buffer.element_size()
            if last or self._pending_bytes >= choice.fusion_bytes:
                fut = self._flush(choice)
            else:
                fut = torch.futures.Future(devices=_devices(buffer))
                self._waiting.append(fut)
        if last:
            self.step += 1
            self._new_step = True
            heartbeat(self.step)
            self._resolve(block=False)
            if self.signal is not None:
                self.signal.flush()
        return fut

    def _begin_step(self, device: torch.device) -> None:
        now = time.perf_counter()
        self._resolve()  # the last step's collectives: all done by now
        if self._step_start is not None:
            step_s, comm_s = now - self._step_start, self._step_comm
            self._window[0] += max(step_s - comm_s, 0.0)
            self._window[1] += comm_s
            self._window[2] += 1
            for group, (_, seconds, _) in self._step_groups.items():
                self._window_groups[group] = self._window_groups.get(group, 0.0) + seconds
            # one rank: its "collectives" move nothing and the model prices none
            if self.replanner is not None and self.choice is not None and self.world > 1:
                self.replanner.observe(self.choice, comm_s)
                for group, (nbytes, seconds, calls) in self._step_groups.items():
                    self.replanner.observe_group(self.choice, group, nbytes, seconds, int(calls))
        self._step_start, self._step_comm, self._step_groups = now, 0.0, {}
        if self.step % self.config.replan_every == 0:
            self._agree(device)

    def _propose(self) -> PlanChoice:
        """Rank 0: the plan every rank adopts now -- the provider's (a fixed plan, a test's
        schedule), else the coordinator's when it sent one this hook can run, else the local
        planner's."""
        assert self.replanner is not None
        if self.plan_provider is not None:
            wanted = self.plan_provider(self.step)  # None: keep the plan
        else:
            wanted = self._cell_choice()
            if wanted is None:
                self._from_cell = 0
                plan = self.replanner.maybe_replan(self.step)
                if self.step > 0:
                    self._log_links()
                return plan.choice
        if self.step > 0:
            self._calibrate()  # fit the links anyway (predictions, logs)
        return wanted or self.choice or self.replanner.plan.choice

    def _publish_links(self) -> None:
        """Rank 0: send the links fitted from the measured collectives, and what each plan it
        ran measured, to the agent (with the next message); the coordinator plans with them."""
        replanner = self.replanner
        if self.signal is None or replanner is None or not replanner.calibrated:
            return
        links = replanner.links
        self.signal.links = (
            links.intra.latency_s,
            links.intra.bandwidth_Bps,
            links.inter.latency_s,
            links.node_Bps,
        )
        self.signal.measured = tuple(
            (c.algorithm.value, c.compression.value, c.fusion_bytes, seconds)
            for c, seconds in replanner.measured_plans()
        )

    def _cell_choice(self) -> PlanChoice | None:
        """Rank 0: the coordinator's current plan, when it sent one this hook can run."""
        if self.cell_plans is None:
            return None
        plan = self.cell_plans.read()
        if plan is None:
            return None
        problem, choice = "", None
        try:
            choice = PlanChoice(
                parse_choice(Algorithm, plan.algorithm, "algorithm"),
                parse_choice(Compression, plan.compression, "compression"),
                plan.fusion_bytes,
            )
        except UsageError as error:
            problem = str(error)
        else:
            allowed = self.planner_config
            if choice.algorithm not in allowed.algorithms:
                problem = f"{plan.algorithm} is not among this hook's algorithms"
            elif choice.compression not in allowed.compressions:
                problem = f"compression {plan.compression} is not among this hook's compressions"
            elif choice.algorithm.two_level and self._intra is None:
                problem = (
                    f"it needs several nodes with several ranks each; this job has "
                    f"{self.job.nodes} x {self.job.gpus_per_node}"
                )
            elif plan.fusion_bytes < 1:
                problem = f"fusion window {plan.fusion_bytes} is not a positive byte count"
        if problem or choice is None:
            if plan.version != self._cell_refused:
                self._cell_refused = plan.version
                logger.warning(
                    "step %d: the coordinator's collective plan v%d (%s) is not used: %s; "
                    "planning locally",
                    self.step,
                    plan.version,
                    plan.label(),
                    problem,
                )
            return None
        if plan.version != self._from_cell:
            self._from_cell = plan.version
            logger.info(
                "step %d: the coordinator's collective plan v%d: %s (%s)",
                self.step,
                plan.version,
                choice.label(),
                plan.reason,
            )
        return choice

    def _calibrate(self) -> None:
        """Rank 0 under a fixed plan: fit the links anyway (predictions, logs)."""
        assert self.replanner is not None
        self.replanner.calibrate()
        self._log_links()

    def _log_links(self) -> None:
        """Rank 0: the fitted links and every plan's model time with them."""
        replanner = self.replanner
        assert replanner is not None
        if not replanner.calibrated:
            return
        predictions = ", ".join(
            f"{alt.choice.label()} {self.predict(alt.choice) * 1e3:.2f}"
            for alt in replanner.plan.alternatives
        )
        logger.info(
            "step %d: links %s; model ms/step: %s",
            self.step,
            replanner.calibration.describe(replanner.links),
            predictions,
        )

    def _agree(self, device: torch.device) -> None:
        """One all_gather: rank 0's plan to everyone, every rank's timings to everyone."""
        row = torch.zeros(_ROW, dtype=torch.float64, device=device)
        if self.rank == 0:
            choice = self._propose()
            self._publish_links()
            version = self.version if choice == self.choice else self.version + 1
            row[0], row[1] = version, _ALGORITHMS.index(choice.algorithm)
            row[2], row[3] = _COMPRESSIONS.index(choice.compression), choice.fusion_bytes
        busy, comm, steps = self._window
        if steps:
            row[4], row[5] = busy / steps, comm / steps
        out = torch.empty(self.world * _ROW, dtype=torch.float64, device=device)
        dist.all_gather_single(out, row, group=self.pg)
        rows = out.view(self.world, _ROW).tolist()
        ran = self.choice  # the plan of the window that ends here
        version = int(rows[0][0])
        if version != self.version:
            choice = PlanChoice(
                _ALGORITHMS[int(rows[0][1])], _COMPRESSIONS[int(rows[0][2])], int(rows[0][3])
            )
            if choice.algorithm.two_level and self._intra is None:
                raise UsageError(
                    f"plan {choice.label()} needs several nodes with several ranks each; "
                    f"this job has {self.job.nodes} x {self.job.gpus_per_node}"
                )
            if self.rank == 0:
                logger.info(
                    "step %d: collective plan v%d %s, predicted %.2f ms/step%s%s",
                    self.step,
                    version,
                    choice.label(),
                    self.predict(choice) * 1e3,
                    " (emulated on " + self.backend + ")"
                    if self._emulates(choice.algorithm)
                    else "",
                    f" (the coordinator's v{self._from_cell})" if self._from_cell else "",
                )
            self.version, self.choice = version, choice
            self.plans.append((self.step, version, choice))
            _PLAN_VERSION.labels(**self._labels).set(version)
        if steps and ran is not None:  # a window of steps ran under ``ran``
            if self.rank == 0:
                groups = ", ".join(
                    f"{group} {seconds / steps * 1e3:.2f}"
                    for group, seconds in sorted(self._window_groups.items())
                )
                logger.info(
                    "steps %d-%d: %s collectives %.2f ms/step measured (%s), %.2f predicted",
                    self.step - steps,
                    self.step - 1,
                    ran.label(),
                    comm / steps * 1e3,
                    groups,
                    self.predict(ran) * 1e3,
                )
            self.windows.append((self.step, ran, [r[4] for r in rows], [r[5] for r in rows]))
            for event in self.detector.update(self.step, [r[4] for r in rows]):
                self.stragglers.append(event)
                if self.rank == 0:
                    logger.warning("%s", event.describe())
                    if self.signal is not None:  # the agent tells the coordinator
                        self.signal.straggler(
                            event.step, event.rank, event.busy_s, event.others_median_s
                        )
            for rank in range(self.world):
                flagged = 1.0 if rank in self.detector.reported else 0.0
                _STRAGGLER.labels(job=self._labels["job"], rank=str(rank)).set(flagged)
        self._window, self._window_groups = [0.0, 0.0, 0], {}

    # -- collectives ------------------------------------------------------------------------

    @property
    def records(self) -> deque[CollectiveRecord]:
        """Every timed collective (the newest ``history``). Reading it waits for the
        collectives issued so far to finish on the GPU (their durations are the GPU's)."""
        self._resolve()
        return self._records

    def _start(self, group: str, tensor: torch.Tensor, emulated: bool = False) -> _Timing:
        """Start timing a collective on ``tensor`` just issued (the plan and step of now)."""
        choice = self.choice
        assert choice is not None
        nbytes = tensor.numel() * tensor.element_size()
        return _Timing(self.step, choice, group, nbytes, emulated, _mark(tensor.device))

    def _finish(self, timing: _Timing, device: torch.device) -> None:
        """The collective of ``timing`` has finished (as seen by the caller's stream)."""
        timing.end = _mark(device)
        self._finished.append(timing)

    def _resolve(self, block: bool = True) -> None:
        """Record the finished collectives, in order; ``block=False`` stops at the first one
        whose GPU events are not complete yet."""
        while self._finished:
            timing = self._finished[0]
            seconds = _elapsed(timing.start, timing.end, block)
            if seconds is None:
                return
            self._finished.popleft()
            self._record(timing, seconds)

    def _record(self, timing: _Timing, seconds: float) -> None:
        self._step_comm += seconds
        totals = self._step_groups.setdefault(timing.group, [0.0, 0.0, 0.0])
        totals[0] += timing.nbytes
        totals[1] += seconds
        totals[2] += 1
        algorithm = timing.choice.algorithm.value
        record = CollectiveRecord(
            time.time(),
            timing.step,
            algorithm,
            timing.choice.compression.value,
            timing.group,
            timing.nbytes,
            seconds,
            timing.emulated,
        )
        self._records.append(record)
        if self.signal is not None:
            self.signal.add(record)
        _SECONDS.labels(**self._labels, strategy=algorithm).observe(seconds)
        _BYTES.labels(**self._labels, strategy=algorithm).inc(timing.nbytes)

    def _timed(
        self,
        work: dist.Work,
        group: str,
        tensor: torch.Tensor,
        result: torch.Tensor,
        emulated: bool = False,
    ) -> torch.futures.Future[torch.Tensor]:
        """The future of ``work``, resolving to ``result`` once its end is marked."""
        timing = self._start(group, tensor, emulated)

        def done(_: torch.futures.Future[Any]) -> torch.Tensor:
            # on a GPU the callback's stream waits for the collective: the end event follows it
            self._finish(timing, tensor.device)
            return result

        return work.get_future().then(done)

    def _blocking(
        self, work: dist.Work, group: str, tensor: torch.Tensor, emulated: bool = False
    ) -> None:
        timing = self._start(group, tensor, emulated)
        work.wait()  # NCCL: the current stream waits for the collective, the host does not
        self._finish(timing, tensor.device)

    def _flush(self, choice: PlanChoice) -> torch.futures.Future[torch.Tensor]:
        """Run one collective over the held buckets; resolve their futures from its result."""
        buffers, waiting = self._pending, self._waiting
        self._pending, self._waiting, self._pending_bytes = [], [], 0
        flat = buffers[0] if len(buffers) == 1 else torch.cat(buffers)
        fut = self._allreduce(flat, choice)
        if not waiting:
            return fut
        sizes = [b.numel() for b in buffers]

        def split(f: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            try:
                parts = f.value().split(sizes)
            except Exception as exc:
                for w in waiting:
                    w.set_exception(exc)  # type: ignore[arg-type]
                raise
            # DDP rebuilds the bucket's views with as_strided, so each result must start at
            # offset 0 of its storage: copy back into the bucket's own buffer.
            for w, buffer, part in zip(waiting, buffers, parts, strict=False):
                w.set_result(buffer.copy_(part))
            return buffers[-1].copy_(parts[-1])

        return fut.then(split)

    def _allreduce(
        self, flat: torch.Tensor, choice: PlanChoice
    ) -> torch.futures.Future[torch.Tensor]:
        """Average ``flat`` over all ranks with ``choice``; the future resolves to ``flat``."""
        if choice.compression is Compression.FP16:
            send = flat.to(torch.float16).div_(self.world)
        elif choice.compression is Compression.BF16:
            send = flat.to(torch.bfloat16).div_(self.world)
        else:
            send = flat.div_(self.world)
        if choice.algorithm is Algorithm.HIERARCHICAL:
            fut = self._hierarchical(send)
        elif choice.algorithm is Algorithm.HIERARCHICAL_LEADER:
            fut = self._leader(send)
        else:
            group, emulated = self._flat_group(choice.algorithm)
            work = dist.all_reduce(send, group=group, async_op=True)
            fut = self._timed(work, "world", send, send, emulated)
        if send is flat:
            return fut
        return fut.then(lambda f: flat.copy_(f.value()))

    def _hierarchical(self, send: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
        g, n = self.job.gpus_per_node, send.numel()
        pad = (-n) % g
        padded = send if pad == 0 else torch.cat([send, send.new_zeros(pad)])
        shard_len = padded.numel() // g
        if self.backend == "nccl":
            shard = padded.new_empty(shard_len)
            work = dist.reduce_scatter_tensor(shard, padded, group=self._intra, async_op=True)
            self._blocking(work, "intra", padded)
        else:  # gloo: no async reduce_scatter_tensor; all-reduce the node, keep our shard
            work = dist.all_reduce(padded, group=self._intra, async_op=True)
            self._blocking(work, "intra", padded, emulated=True)
            shard = padded.view(g, shard_len)[self.local_index]
        self._blocking(dist.all_reduce(shard, group=self._inter, async_op=True), "inter", shard)
        gathered = torch.empty_like(padded)
        work = dist.all_gather_single(gathered, shard, group=self._intra, async_op=True)
        out = gathered[:n] if pad else gathered
        fut = self._timed(work, "intra", shard, out)
        return fut.then(lambda f: send.copy_(f.value()))

    def _leader(self, send: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
        leader = self.node * self.job.gpus_per_node
        work = dist.reduce(send, dst=leader, group=self._intra, async_op=True)
        self._blocking(work, "intra", send)
        if self.local_index == 0:
            self._blocking(dist.all_reduce(send, group=self._inter, async_op=True), "leaders", send)
        work = dist.broadcast(send, src=leader, group=self._intra, async_op=True)
        return self._timed(work, "intra", send, send)

    def _powersgd(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        """torch's PowerSGD hook on this bucket, timed from call to completion."""
        if self._psgd is None:
            self._psgd = PowerSGDState(
                process_group=self.pg,
                matrix_approximation_rank=self.planner_config.powersgd_rank,
                start_powerSGD_iter=self.config.powersgd_start_step,
            )
        timing = self._start("world", bucket.buffer())

        def done(f: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            self._finish(timing, bucket.buffer().device)
            return f.value()

        fut = powerSGD_hook(self._psgd, bucket).then(done)
        # PowerSGD's callbacks issue its second all-reduce from the backend's threads; with two
        # buckets in flight the ranks could issue them in different orders. One at a time.
        fut.wait()
        return fut

    # -- reporting --------------------------------------------------------------------------

    def predict(self, choice: PlanChoice) -> float:
        """The cost model's collective seconds per step for ``choice`` on this job (on rank 0
        with the links fitted from the measurements so far, else the profile's)."""
        links = self.replanner.links if self.replanner is not None else self.links
        return step_time(choice, self.job, links, self.planner_config.powersgd_rank)

    def close(self) -> None:
        """After the last step: record the collectives still being timed and send the last
        figures to the agent (the last step's durations are otherwise read at a next step
        that never comes)."""
        self._resolve()
        if self.signal is not None:
            self.signal.close()
            self.signal = None

    def current_plan(self) -> CollectivePlan | None:
        """Rank 0: the planner's full plan (with alternatives); None on other ranks."""
        return self.replanner.plan if self.replanner is not None else None


@dataclass(slots=True)
class _Timing:
    """One collective being timed: what :class:`CollectiveRecord` needs, and two marks."""

    step: int
    choice: PlanChoice
    group: str
    nbytes: int
    emulated: bool
    start: float | torch.cuda.Event
    end: float | torch.cuda.Event | None = None


def _mark(device: torch.device) -> float | torch.cuda.Event:
    """Now: the host clock for CPU tensors; for GPU tensors a timing event on the device's
    current stream (NCCL collectives are asynchronous to the host, so the host clock would
    time only their launch)."""
    if device.type != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record(torch.cuda.current_stream(device))
    return event


def _elapsed(
    start: float | torch.cuda.Event, end: float | torch.cuda.Event | None, block: bool
) -> float | None:
    """Seconds from ``start`` to ``end``; None if ``end`` is a GPU event not reached yet and
    ``block`` is False (with ``block`` it waits for it)."""
    if isinstance(start, float) and isinstance(end, float):
        return end - start
    assert isinstance(start, torch.cuda.Event) and isinstance(end, torch.cuda.Event)
    if not block and not end.query():
        return None
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _devices(tensor: torch.Tensor) -> list[int | str | torch.device] | None:
    return [tensor.device] if tensor.device.type == "cuda" else None


def mesh_comm_hook(state: MeshHook, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The function DDP calls per bucket (``register_comm_hook(state, mesh_comm_hook)``)."""
    return state.on_bucket(bucket)


# DDP checks the annotations as objects; this module's are strings (PEP 563).
mesh_comm_hook.__annotations__.update(
    {"bucket": dist.GradBucket, "return": torch.futures.Future[torch.Tensor]}
)


def prepare(
    model: DistributedDataParallel,
    config: MeshHookConfig | None = None,
    *,
    plan_provider: PlanProvider | None = None,
) -> MeshHook:
    """Make a DDP model mesh-aware: build a :class:`MeshHook` for it and register it.

    Works under ``infermesh-run``, plain ``torchrun`` and any launcher that sets torchrun's
    environment. Call it once, before the first backward.
    """
    if not isinstance(model, DistributedDataParallel):
        raise UsageError(
            f"prepare() needs a DistributedDataParallel model, got {type(model).__name__}; "
            "wrap it first: DistributedDataParallel(model)"
        )
    config = config or MeshHookConfig()
    pg = model.process_group
    world = dist.get_world_size(pg)
    g = config.gpus_per_node or int(os.environ.get("LOCAL_WORLD_SIZE", world))
    grad_bytes = sum(
        p.numel() * p.element_size() for p in model.module.parameters() if p.requires_grad
    )
    job = JobShape(
        nodes=max(1, world // g),
        gpus_per_node=g,
        grad_bytes=max(1, grad_bytes),
        bucket_bytes=max(1, int(model.bucket_bytes_cap)),
    )
    fixed = config.fixed_plan or os.environ.get(PLAN_ENV)
    if fixed and plan_provider is None:
        choice = parse_plan_choice(fixed, job.grad_bytes)
        plan_provider = lambda step: choice  # noqa: E731
    device = next((p.device for p in model.module.parameters()), None)
    hook = MeshHook(
        job,
        config,
        plan_provider=plan_provider,
        process_group=pg,
        device=device if device is not None and device.type == "cuda" else None,
    )
    model.register_comm_hook(hook, mesh_comm_hook)
    if hook.rank == 0:
        logger.info(
            "mesh hook: %d node(s) x %d rank(s), %s of gradients, backend %s; %s",
            job.nodes,
            g,
            format_bytes(grad_bytes),
            hook.backend,
            "; ".join(hook.emulation_notes()),
        )
    return hook
