"""Command-line parsing of infermesh-run: torchrun parity, PET_* variables, config, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from infermesh.client.connection import Connection
from infermesh.core.errors import UsageError
from infermesh.train.launcher import main as launcher_main
from infermesh.train.launcher.options import build_parser, parse_options


def _option_strings(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_every_torchrun_flag_is_accepted_in_both_spellings():
    from torch.distributed.run import get_args_parser

    missing = _option_strings(get_args_parser()) - _option_strings(build_parser())
    assert not missing, f"torchrun flags infermesh-run lacks: {sorted(missing)}"


def test_torchrun_style_command_line_parses(tmp_path: Path):
    s = tmp_path / "train.py"
    s.write_text("")
    opts = parse_options(
        [
            "--nnodes=1:4",
            "--nproc_per_node",
            "2",
            "--rdzv_backend",
            "c10d",
            "--rdzv-endpoint",
            "node0:29400",
            "--max_restarts=3",
            "--rdzv-conf",
            "join_timeout=30,read_timeout=10",
            str(s),
            "--lr",
            "3e-4",
        ]
    )
    assert (opts.min_nodes, opts.max_nodes, opts.nproc_per_node) == (1, 4, 2)
    assert opts.rdzv_conf == {"join_timeout": "30", "read_timeout": "10"}
    assert opts.max_restarts == 3
    assert opts.training_script_args == ["--lr", "3e-4"]
    assert opts.worker_start == "fork"


def test_pet_environment_variables_set_defaults(tmp_path: Path, monkeypatch):
    s = tmp_path / "train.py"
    s.write_text("")
    monkeypatch.setenv("PET_NPROC_PER_NODE", "3")
    monkeypatch.setenv("PET_STANDALONE", "1")
    monkeypatch.setenv("PET_MAX_RESTARTS", "2")
    opts = parse_options([str(s)])
    assert (opts.nproc_per_node, opts.standalone, opts.max_restarts) == (3, True, 2)
    assert parse_options(["--max-restarts", "5", str(s)]).max_restarts == 5


def test_config_file_provides_hang_timeout_and_the_command_line_wins(tmp_path: Path):
    s = tmp_path / "train.py"
    s.write_text("")
    cfg = tmp_path / "launch.yaml"
    cfg.write_text("hang_timeout: 300\nmax-restarts: 2\nstandalone: true\n")
    opts = parse_options(["--config", str(cfg), str(s)])
    assert (opts.hang_timeout, opts.max_restarts, opts.standalone) == (300.0, 2, True)
    opts = parse_options(["--config", str(cfg), "--hang-timeout", "5", str(s)])
    assert opts.hang_timeout == 5.0


BAD_INPUTS = {
    "unknown flag": (["--no-such-flag", "{script}"], "unrecognized arguments: --no-such-flag"),
    "missing script": (["missing_train.py"], "training script 'missing_train.py' not found"),
    "nnodes min above max": (["--nnodes", "3:2", "{script}"], "minimum 3 is larger than maximum 2"),
    "nnodes garbage": (["--nnodes", "two", "{script}"], "expected N, MIN:MAX or auto"),
    "zero workers": (["--nproc-per-node", "0", "{script}"], "must be at least 1"),
    "unreadable config": (["--config", "/nonexistent/launch.yaml", "{script}"], "cannot read"),
    "config unknown key": (["--config", "{unknown_cfg}", "{script}"], "unknown key 'hang_timout'"),
    "config not yaml": (["--config", "{broken_cfg}", "{script}"], "not valid YAML"),
    "negative hang timeout": (["--hang-timeout", "-1", "{script}"], "must be a positive number"),
    "bad redirects": (["--redirects", "7", "{script}"], "expected 0-3"),
    "module with no-python": (["-m", "--no-python", "pkg"], "cannot be used together"),
    "insecure with tls dir": (
        ["--nnodes", "2", "--coordinator", "c:1", "--insecure", "--tls-dir", "certs", "{script}"],
        "--insecure conflicts with TLS options and tokens; drop one of them",
    ),
    "token without tls": (
        ["--nnodes", "2", "--coordinator", "127.0.0.1:1", "--token", "abc", "{script}"],
        "a token needs TLS",
    ),
    "missing tls dir in rendezvous mode": (
        [
            "--nnodes",
            "2",
            "--rdzv-backend",
            "infermesh",
            "--rdzv-endpoint",
            "127.0.0.1:1",
            "--tls-dir",
            "nope",
            "{script}",
        ],
        "TLS CA file nope/ca.pem does not exist",
    ),
    "tls options without a coordinator": (
        ["--standalone", "--tls-dir", "certs", "--token", "abc", "{script}"],
        "--tls-dir, --token: this run talks to no coordinator",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_a_one_line_error_exit_2_and_starts_nothing(
    case: str, tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("raise SystemExit('must not run')\n")
    (tmp_path / "unknown.yaml").write_text("hang_timout: 3\n")
    (tmp_path / "broken.yaml").write_text("hang_timeout: [1,\n")
    argv_t, expected = BAD_INPUTS[case]
    argv = [
        a.format(script="train.py", unknown_cfg="unknown.yaml", broken_cfg="broken.yaml")
        for a in argv_t
    ]
    assert launcher_main.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("infermesh-run: error: ")
    assert expected in err
    assert not (tmp_path / "runs").exists()


def test_tls_options_parse_into_the_connection(tmp_path: Path):
    s = tmp_path / "train.py"
    s.write_text("")
    opts = parse_options([str(s)])
    assert opts.connection == Connection()
    argv = ["--coordinator", "coord:7600", "--tls-dir", "certs/user-alice", "--token", "t"]
    argv += ["--tls-server-name", "infermesh-coordinator"]
    assert parse_options([*argv, str(s), "--lr", "1"]).connection == Connection(
        coordinator="coord:7600",
        tls_dir="certs/user-alice",
        token="t",
        tls_server_name="infermesh-coordinator",
    )
    argv = ["--ca", "ca.pem", "--cert", "cert.pem", "--key", "key.pem", "--insecure"]
    conn = parse_options([*argv, str(s)]).connection
    assert (conn.ca, conn.cert, conn.key, conn.insecure) == ("ca.pem", "cert.pem", "key.pem", True)
    assert conn.tls_flags() == ["--ca", "--cert", "--key", "--insecure"]


def test_config_file_sets_tls_options_and_insecure_false_stays_off(tmp_path: Path):
    s = tmp_path / "train.py"
    s.write_text("")
    cfg = tmp_path / "launch.yaml"
    cfg.write_text("tls_dir: certs/node-a\ntls-server-name: coord\ninsecure: false\n")
    conn = parse_options(["--config", str(cfg), str(s)]).connection
    assert conn == Connection(tls_dir="certs/node-a", tls_server_name="coord")
    cfg.write_text("insecure: true\n")
    assert parse_options(["--config", str(cfg), str(s)]).connection.insecure is True


def test_usage_error_is_a_value_error():
    assert issubclass(UsageError, ValueError)


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--nnodes", "auto"], None, (True, None)),  # embedded local cell
        (["--nnodes", "auto"], "10.0.0.5", (True, "10.0.0.5:7600")),
        (["--nnodes", "2:4", "--coordinator", "coord:7601"], None, (True, "coord:7601")),
        (["--nnodes", "2"], "coord", (True, "coord:7600")),
        (["--nnodes", "2"], None, (False, None)),  # plain torchrun behaviour
        (["--standalone", "--nnodes", "auto"], "coord", (False, None)),
        (
            ["--nnodes", "2", "--rdzv-backend", "infermesh", "--rdzv-endpoint", "coord:7600"],
            "coord",
            (False, None),  # per-node mode: this process is one node of the job
        ),
    ],
)
def test_submit_mode_is_chosen_by_coordinator_and_nnodes(
    tmp_path: Path, monkeypatch, argv, env, expected
):
    s = tmp_path / "train.py"
    s.write_text("")
    if env is None:
        monkeypatch.delenv("INFERMESH_COORDINATOR", raising=False)
    else:
        monkeypatch.setenv("INFERMESH_COORDINATOR", env)
    assert launcher_main.submit_target(parse_options([*argv, str(s)])) == expected


def test_bad_coordinator_address_is_a_usage_error(tmp_path: Path, monkeypatch):
    s = tmp_path / "train.py"
    s.write_text("")
    monkeypatch.delenv("INFERMESH_COORDINATOR", raising=False)
    opts = parse_options(["--nnodes", "auto", "--coordinator", "coord:http", str(s)])
    with pytest.raises(UsageError, match="port 'http' is not a number"):
        launcher_main.submit_target(opts)
