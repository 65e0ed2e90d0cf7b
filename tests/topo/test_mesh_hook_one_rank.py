"""The hook in a world of one rank: what ``infermesh-run --nproc-per-node 1`` gives a job."""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from infermesh.train.hooks import MeshHookConfig, prepare


def test_a_one_rank_job_trains_with_the_hook_and_plans_nothing_from_its_timings(
    gloo_world: None,
) -> None:
    model = DistributedDataParallel(torch.nn.Linear(16, 16))
    hook = prepare(model, MeshHookConfig(job="one", replan_every=2))
    for _ in range(5):  # steps 2 and 4 agree on a plan after a measured window
        model(torch.randn(4, 16)).sum().backward()
    assert hook.step == 5 and len(hook.windows) == 2
    assert {r.step for r in hook.records} == set(range(5))
    replanner = hook.current_plan()
    assert replanner is not None and hook.replanner is not None
    assert not hook.replanner.calibrated  # one rank moves no bytes: nothing to fit
