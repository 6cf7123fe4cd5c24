"""Every example in examples/ runs as it is, against a real local control plane."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECTED = {
    "declarative_simple.py": "remote() returned: 'greeted Archil'",
    "declarative_ml_training.py": "trained: {'w': 3.0",
    "declarative_data_processing.py": "'shard': 'shard-003.csv', 'rows': 1000",
    "run_command.py": "batch job finished with exit code 0",
    "simple_container.py": "Finished: status=exited exit_code=0",
    "spawn_and_collect.py": "all folds collected by another process",
    "retries.py": "downloaded on attempt 3",
    "warm_model.py": "model loaded once: True",
}


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, conn: dict[str, str]) -> None:
    env = {**os.environ, "ARCHIL_BASE_URL": conn["base_url"], "ARCHIL_API_KEY": conn["api_key"]}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert EXPECTED[name] in proc.stdout
