"""Helpers of the command line tests: the real ``archil`` console script in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import archil
from archil.local.embedded import LocalServer

ARCHIL = Path(sys.executable).parent / "archil"
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ARCHIL_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIL_")}
    env.update(extra)
    return env


@dataclass
class Cli:
    """Runs the console script against one server; keeps every output to check for the key."""

    server: LocalServer
    outputs: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return clean_env(ARCHIL_BASE_URL=self.server.base_url, ARCHIL_API_KEY=self.server.api_key)

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("timeout", 120)
        result = subprocess.run(
            [str(ARCHIL), *args],
            env=self.env if env is None else env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            **kwargs,
        )
        self.outputs += [result.stdout, result.stderr]
        return result

    def ok(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run and insist on exit code 0."""
        result = self(*args, **kwargs)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def client(self) -> archil.Archil:
        return archil.Archil(api_key=self.server.api_key, base_url=self.server.base_url)
