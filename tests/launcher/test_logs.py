"""Root-cause extraction and exit descriptions used by the failure summary."""

from __future__ import annotations

import json
from pathlib import Path

from infermesh.train.launcher.logs import describe_exit, first_traceback

TB = """Traceback (most recent call last):
  File "/job/train.py", line 5, in <module>
    step()
ValueError: bad batch at step 3
"""


def test_exit_codes_and_signals_are_described_in_words():
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"


def test_root_cause_comes_from_the_error_file_when_there_is_one(tmp_path: Path):
    ef = tmp_path / "error.json"
    ef.write_text(
        json.dumps(
            {
                "message": {
                    "message": "ValueError: bad batch at step 3",
                    "extraInfo": {"py_callstack": TB, "timestamp": "1"},
                }
            }
        )
    )
    assert first_traceback(str(ef), "") == ("ValueError: bad batch at step 3", TB)


def test_root_cause_falls_back_to_the_first_traceback_in_stderr(tmp_path: Path):
    err = tmp_path / "stderr.log"
    prefixed = "".join(f"[rank1]: {line}\n" for line in TB.splitlines())
    err.write_text("some warning\n" + prefixed + "Traceback (most recent call last):\n  later\n")
    message, tb = first_traceback(str(tmp_path / "missing.json"), str(err))
    assert message == "ValueError: bad batch at step 3"
    assert tb == TB.rstrip("\n")


def test_no_traceback_anywhere_gives_empty_strings(tmp_path: Path):
    err = tmp_path / "stderr.log"
    err.write_text("killed\n")
    assert first_traceback("", str(err)) == ("", "")
