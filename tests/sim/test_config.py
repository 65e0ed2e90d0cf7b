"""Config validation: every error names the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.config import ConfigError, dump, load, parse, to_dict
from sim.scenarios import EXAMPLES, example, example_yaml


def _errors(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse(data)
    return exc.value.problems


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_every_example_validates_and_round_trips(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.yaml"
    path.write_text(example_yaml(kind))
    cfg = load(path)
    assert to_dict(cfg) == to_dict(parse(example(kind)))
    assert dump(cfg) == example_yaml(kind)


def test_negative_rate_names_key_value_and_allowed_range() -> None:
    data = example("small")
    data["workload"]["arrival"]["rate_rps"] = -5
    assert _errors(data) == [
        "workload.arrival.rate_rps: value -5 is not allowed; allowed: a number > 0"
    ]


def test_unknown_key_lists_the_allowed_keys() -> None:
    data = example("small")
    data["fleet"]["cels"] = 3
    (err,) = _errors(data)
    assert err.startswith("fleet.cels: unknown key; allowed: cells, nodes_per_cell, mix")


def test_bad_choice_lists_the_choices() -> None:
    data = example("small")
    data["workload"]["arrival"]["process"] = "bursty"
    assert _errors(data) == [
        "workload.arrival.process: value 'bursty' is not allowed; allowed: poisson, mmpp"
    ]


def test_all_problems_are_reported_together() -> None:
    data = example("small")
    data["seed"] = "x"
    data["fleet"]["nodes_per_cell"] = 1.5
    data["signals"]["perfect"] = "yes"
    errs = _errors(data)
    assert errs == [
        "seed: value 'x' is not allowed; allowed: an integer >= 0",
        "fleet.nodes_per_cell: value 1.5 is not allowed; allowed: an integer >= 1 and <= 1000000",
        "signals.perfect: value 'yes' is not allowed; allowed: true or false",
    ]


def test_cross_key_problems_name_the_key() -> None:
    data = example("small")
    data["fleet"]["mix"] = {"H200": 1.0}
    data["workload"]["arrival"] = {"process": "mmpp", "states": [{"rate_rps": 1.0, "dwell_s": 1.0}]}
    data["strategies"] = ["hybird"]
    errs = _errors(data)
    assert any(e.startswith("fleet.mix.H200: unknown GPU profile; allowed: A100") for e in errs)
    assert any(e.startswith("workload.arrival.states: value 1 states") for e in errs)
    assert any(
        e.startswith("strategies[0]: value 'hybird' is not allowed; allowed: ") for e in errs
    )


def test_request_kind_keys_are_checked() -> None:
    data = example("small")
    data["workload"]["request_types"]["video"] = {"weight": 1.0}
    assert _errors(data) == [
        "workload.request_types: key 'video' is not allowed; allowed: llm, vision, asr"
    ]


def test_unreadable_and_invalid_yaml_files_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--config: value .* cannot be read"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load(bad)
