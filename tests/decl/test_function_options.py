"""Options of @app.function added for batch scripts: retries, timeouts, secrets; checked early."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cloudpickle
import pytest

import archil
from archil._callproto import encode_call

VALUE = "s3cr3t-value-0123456789"


def make_app() -> archil.App:
    return archil.App(name="t", disk_id="disk_abc123")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"retries": -1}, "max_retries"),
        ({"retries": "3"}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"startup_timeout": 0}, "startup_timeout"),
        ({"timeout": 2.5}, "timeout"),
        ({"secrets": archil.Secret.from_dict({"A": "b"})}, "secrets"),
        ({"secrets": [{"A": "b"}]}, r"secrets\[0\]"),
    ],
)
def test_bad_options_are_value_errors_naming_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        make_app().function(**kwargs)  # type: ignore[arg-type]


def test_retries_policy() -> None:
    with pytest.raises(ValueError, match="backoff_coefficient"):
        archil.Retries(max_retries=1, backoff_coefficient=0.5)
    with pytest.raises(ValueError, match="max_retries"):
        archil.Retries(max_retries=11)
    policy = archil.Retries(max_retries=5, initial_delay=1.0, backoff_coefficient=3.0, max_delay=10)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 3.0, 9.0, 10.0]

    @make_app().function(retries=2)
    def f() -> None:
        pass

    assert f.options.retries == archil.Retries(max_retries=2)
    assert f.options.max_attempts == 3


def test_secret_constructors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# comment\nexport A=1\nB=\"two words\\nline\"\nC='single'\nD=plain # note\n\n"
    )
    assert archil.Secret.from_dotenv(dotenv)._env() == {
        "A": "1",
        "B": "two words\nline",
        "C": "single",
        "D": "plain",
    }
    monkeypatch.setenv("MY_TOKEN", VALUE)
    assert archil.Secret.from_local_environ(["MY_TOKEN"])._env() == {"MY_TOKEN": VALUE}
    with pytest.raises(ValueError, match="NOT_SET_ANYWHERE"):
        archil.Secret.from_local_environ(["NOT_SET_ANYWHERE"])
    with pytest.raises(ValueError, match="1BAD"):
        archil.Secret.from_dict({"1BAD": "x"})
    with pytest.raises(ValueError, match="reserved"):
        archil.Secret.from_dict({"ARCHIL_IS_REMOTE": "0"})
    with pytest.raises(ValueError, match=r"missing\.env"):
        archil.Secret.from_dotenv(tmp_path / "missing.env")
    bad = tmp_path / "bad.env"
    bad.write_text("JUSTANAME\n")
    with pytest.raises(ValueError, match=r"bad\.env:1"):
        archil.Secret.from_dotenv(bad)


def test_secret_values_never_show_nor_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = archil.Secret.from_dict({"TOKEN": VALUE})
    app = make_app()

    @app.function(secrets=[secret])
    def uses() -> str:
        return repr(secret)

    for text in (repr(secret), str(secret), repr(uses), repr(uses.options), repr(app)):
        assert VALUE not in text
    assert "TOKEN" in repr(secret)
    for blob in (
        pickle.dumps(secret),
        cloudpickle.dumps(uses),
        encode_call(uses.fn, (secret,), {"s": secret}),
    ):
        assert VALUE.encode() not in blob
    # Unpickled (in a container), a secret reads its values from the environment.
    monkeypatch.setenv("TOKEN", "from-the-container")
    assert pickle.loads(pickle.dumps(secret))._env() == {"TOKEN": "from-the-container"}
    assert uses.options.redact(f"error: {VALUE}!") == "error: ********!"
    env = uses.options.process_env("/lib")
    assert env["TOKEN"] == VALUE and env["ARCHIL_IS_REMOTE"] == "1"
    assert uses.options.template.env is None  # never the sandbox's env


def test_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARCHIL_IS_REMOTE", raising=False)
    assert archil.is_local() is True
    monkeypatch.setenv("ARCHIL_IS_REMOTE", "1")
    assert archil.is_local() is False
    assert os.environ["ARCHIL_IS_REMOTE"] == "1"


def test_cls_markers_and_local_calls() -> None:
    app = make_app()

    @app.cls(scaledown_window=5)
    class Model:
        def __init__(self, scale: int) -> None:
            self.scale = scale
            self.loaded = 0

        @archil.enter()
        def load(self) -> None:
            self.loaded += 1

        @archil.method()
        def predict(self, x: int) -> tuple[int, int]:
            return self.scale * x, self.loaded

        def helper(self) -> None:
            pass

    assert (Model.methods, Model.enters) == (("predict",), ("load",))
    inst = Model(3)
    assert inst.predict.local(2) == (6, 1)
    assert inst.predict.local(3) == (9, 1)  # enter ran once
    with pytest.raises(AttributeError, match="no remote method 'helper'"):
        inst.helper  # noqa: B018
    assert "Model" in repr(Model) and "predict" in repr(inst.predict)
    with pytest.raises(TypeError, match="class"):
        app.cls()(lambda: None)  # type: ignore[arg-type]
