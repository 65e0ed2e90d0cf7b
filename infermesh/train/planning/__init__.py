"""Collective topology planning (pure: imports only ``infermesh.core`` and the stdlib).

- :mod:`.api` -- value types: :class:`JobShape`, :class:`PlanChoice`, :class:`CollectivePlan`.
- :mod:`.links` -- link classes, their documented defaults, named hardware profiles.
- :mod:`.cost_model` -- alpha-beta model of all-reduce algorithms, compression and fusion.
- :mod:`.calibration` -- :class:`LinkCalibration`: link figures fitted from measured collectives.
- :mod:`.planner` -- :func:`plan_collectives` (with hysteresis) and :class:`Replanner`.
- :mod:`.placement` -- :func:`plan_placement`: which nodes run a job, in which rank order.
"""

from infermesh.train.planning.api import (
    Algorithm,
    Alternative,
    Backend,
    CollectivePlan,
    Compression,
    JobShape,
    Measurement,
    PlanChoice,
    format_bytes,
    parse_bytes,
    parse_choice,
    parse_plan_choice,
)
from infermesh.train.planning.calibration import LinkCalibration, measured_links
from infermesh.train.planning.cost_model import allreduce_time, collectives, step_time
from infermesh.train.planning.links import (
    DEFAULT_LINKS,
    DEFAULT_PROFILE,
    PROFILE_ENV,
    PROFILES,
    Link,
    LinkClass,
    LinkModel,
    Profile,
    link_profile,
)
from infermesh.train.planning.placement import (
    explain_refusal,
    format_placement,
    plan_placement,
)
from infermesh.train.planning.planner import (
    PlannerConfig,
    Replanner,
    candidates,
    describe,
    plan_collectives,
    probe_plan,
)

__all__ = [
    "DEFAULT_LINKS",
    "DEFAULT_PROFILE",
    "PROFILES",
    "PROFILE_ENV",
    "Algorithm",
    "Alternative",
    "Backend",
    "CollectivePlan",
    "Compression",
    "JobShape",
    "Link",
    "LinkCalibration",
    "LinkClass",
    "LinkModel",
    "Measurement",
    "PlanChoice",
    "PlannerConfig",
    "Profile",
    "Replanner",
    "allreduce_time",
    "candidates",
    "collectives",
    "describe",
    "explain_refusal",
    "format_bytes",
    "format_placement",
    "link_profile",
    "measured_links",
    "parse_bytes",
    "parse_choice",
    "parse_plan_choice",
    "plan_collectives",
    "plan_placement",
    "probe_plan",
    "step_time",
]
