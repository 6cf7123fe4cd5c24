"""``archil.Secret``: environment variables for a function's container that stay secret.

A secret's values reach the container as environment variables of the call's
process (the ``env`` of the process ``start`` message), never as the sandbox's
``env``, which a control plane stores and echoes in the sandbox record. Its
values are ``SecretStr``: no repr, log line or error shows them, and pickling a
``Secret`` (a function's closure or globals may hold one) carries only its
names; unpickled inside the container, it reads its values from the environment
the call was given.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

try:
    from pydantic import SecretStr
except ImportError:  # in a container that has only archil's dependency-free part

    class SecretStr:  # type: ignore[no-redef]
        """A stand-in for pydantic's ``SecretStr``: the value is never shown."""

        def __init__(self, value: str) -> None:
            self._secret_value = value

        def get_secret_value(self) -> str:
            """The value."""
            return self._secret_value

        def __repr__(self) -> str:
            return "SecretStr('**********')"


__all__ = ["Secret"]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_PREFIX = "ARCHIL_"


def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{where}: {name!r} is not a valid environment variable name")
    if name.startswith(_RESERVED_PREFIX) or name == "PYTHONPATH":
        raise ValueError(f"{where}: {name} is reserved for archil's own use")
    return name


class Secret:
    """Named secret values, given to a function's container as environment variables::

        api = archil.Secret.from_dict({"SERVICE_TOKEN": token})

        @app.function(secrets=[api])
        def fetch():
            import os
            return call_service(os.environ["SERVICE_TOKEN"])

    Values are never shown (``repr(secret)`` lists the names only), never
    written to the app's disk and never sent in a sandbox's record.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, SecretStr]) -> None:
        self._values: dict[str, SecretStr] = dict(values)

    @classmethod
    def from_dict(cls, values: Mapping[str, str]) -> Secret:
        """A secret holding ``values`` (names of environment variables to their values)."""
        if not isinstance(values, Mapping):
            raise ValueError(
                f"Secret.from_dict: expected a mapping of names to strings, "
                f"got {type(values).__name__}"
            )
        checked: dict[str, SecretStr] = {}
        for name, value in values.items():
            _check_name(name, "Secret.from_dict")
            if not isinstance(value, str) or "\x00" in value:
                raise ValueError(
                    f"Secret.from_dict: the value of {name} must be a string without NUL bytes"
                )
            checked[name] = SecretStr(value)
        return cls(checked)

    @classmethod
    def from_dotenv(cls, path: str | os.PathLike[str] = ".env") -> Secret:
        """A secret holding the variables of a ``.env`` file (``NAME=value`` lines).

        Blank lines and ``#`` comments are skipped, a leading ``export`` is allowed,
        and a value may be quoted with ``'`` or ``"`` (``\\n`` is a newline in
        double quotes).
        """
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(
                f"Secret.from_dotenv: cannot read {str(file)!r}: {exc.strerror}"
            ) from None
        values: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export ") :].lstrip()
            name, sep, value = line.partition("=")
            name = name.strip()
            if not sep:
                raise ValueError(f"Secret.from_dotenv: {file!s}:{number}: expected NAME=value")
            _check_name(name, f"Secret.from_dotenv: {file!s}:{number}")
            values[name] = _dotenv_value(value.strip())
        return cls.from_dict(values)

    @classmethod
    def from_local_environ(cls, names: Iterable[str]) -> Secret:
        """A secret holding these variables of this process's environment (each must be set)."""
        if isinstance(names, str):
            raise ValueError(
                "Secret.from_local_environ: names must be a list of names, not a string"
            )
        values: dict[str, str] = {}
        for name in names:
            _check_name(name, "Secret.from_local_environ")
            if name not in os.environ:
                raise ValueError(
                    f"Secret.from_local_environ: {name} is not set in this environment"
                )
            values[name] = os.environ[name]
        return cls.from_dict(values)

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the variables this secret sets."""
        return tuple(self._values)

    def _env(self) -> dict[str, str]:
        """The values, for the call's process environment (never logged or stored)."""
        return {name: value.get_secret_value() for name, value in self._values.items()}

    def __repr__(self) -> str:
        return f"Secret(names={list(self._values)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._env() == self._env()

    def __hash__(self) -> int:
        return hash(self.names)

    def __reduce__(self) -> tuple[Any, ...]:
        # Only the names travel: a pickled Secret (in a call's payload) carries no value.
        return (_from_environment, (self.names,))


def _from_environment(names: tuple[str, ...]) -> Secret:
    """A secret rebuilt from its names, its values read from the environment (in the container)."""
    return Secret({n: SecretStr(os.environ.get(n, "")) for n in names})


def _dotenv_value(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        if value[0] == '"':
            inner = inner.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        return inner
    # An unquoted value ends at a comment.
    return value.split(" #", 1)[0].rstrip()


def merged_env(secrets: Iterable[Secret]) -> dict[str, str]:
    """The environment the secrets give, later secrets overriding earlier ones."""
    env: dict[str, str] = {}
    for secret in secrets:
        env.update(secret._env())
    return env
