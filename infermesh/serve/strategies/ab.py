"""A/B splits: two strategies share one stream of requests, split by a stable hash.

An A/B spec is written ``ab:A:B[:SPLIT]`` (``ab:mesh:round_robin:0.5``): a share ``SPLIT``
(default 0.5) of requests go to arm ``a`` (strategy ``A``), the rest to arm ``b``. The arm
of a request is a pure function of a key (the request id, or the tenant to keep each
tenant on one arm) and a salt, so retries of one request stay on the same arm and two
runs split the same way. Both arms see the same fleet view and share the fleet, as two
router variants do in production; the per-arm metrics compare them under equal load.
"""

from __future__ import annotations

from dataclasses import dataclass

from infermesh.serve.strategies.api import StrategyError

__all__ = ["AB_PREFIX", "AbSpec", "arm_of", "parse_ab"]

AB_PREFIX = "ab:"
_MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class AbSpec:
    """Arm ``a`` gets a ``split`` share of requests, arm ``b`` the rest."""

    a: str
    b: str
    split: float = 0.5

    @property
    def name(self) -> str:
        """The canonical spelling, ``ab:A:B:SPLIT``."""
        return f"{AB_PREFIX}{self.a}:{self.b}:{self.split:g}"

    def arm_names(self) -> tuple[str, str]:
        """Labels of the two arms: ``a:A`` and ``b:B``."""
        return f"a:{self.a}", f"b:{self.b}"


def parse_ab(spec: str) -> AbSpec | None:
    """The :class:`AbSpec` written in ``spec``, or None if ``spec`` is a plain strategy name.

    Raises :class:`StrategyError` when ``spec`` starts with ``ab:`` but is malformed.
    """
    if not spec.startswith(AB_PREFIX):
        return None
    parts = spec[len(AB_PREFIX) :].split(":")
    form = "allowed: ab:A:B or ab:A:B:SPLIT with strategy names A, B and 0 < SPLIT < 1"
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise StrategyError(f"A/B spec {spec!r} is malformed; {form}")
    split = 0.5
    if len(parts) == 3:
        try:
            split = float(parts[2])
        except ValueError:
            raise StrategyError(
                f"A/B spec {spec!r}: split {parts[2]!r} is not a number; {form}"
            ) from None
        if not 0.0 < split < 1.0:
            raise StrategyError(f"A/B spec {spec!r}: split {parts[2]} is out of range; {form}")
    return AbSpec(parts[0], parts[1], split)


def arm_of(key: int, split: float, salt: int = 0) -> int:
    """0 (arm a) for about ``split`` of keys, else 1; a stable hash (splitmix64) of key+salt."""
    z = (key * 0x9E3779B97F4A7C15 + salt + 0x632BE59BD9B4E019) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return 0 if z < split * 2.0**64 else 1
