import pickle
import sys
from pathlib import Path

import cloudpickle
import pytest

import archil
from archil._callproto import decode_result, encode_call

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
SECRET = "key-supersecret-0123456789abcdef"


def make_app() -> archil.App:
    return archil.App(name="t", disk_id="disk_abc123", disk_env="production", api_key=SECRET)


def test_function_keeps_options_and_runs_locally() -> None:
    app = make_app()
    vol = archil.Volume.from_disk_id("disk_shared", shared=True)

    @app.function(
        vcpu_count=2, mem_size_mib=1024, ports=[8080], additional_volumes={"/datasets": vol}
    )
    def add(a: int, b: int) -> int:
        return a + b

    assert add.local(1, 2) == 3
    assert add(2, 3) == 5
    assert add.__name__ == "add"
    template = add.options.template
    assert (template.vcpu_count, template.mem_size_mib, template.ports) == (2, 1024, [8080])
    main, extra = template.mounts or []
    assert (main.disk_id, main.path, main.conditional) == ("disk_abc123", "/mnt/archil", True)
    assert (extra.disk_id, extra.path, extra.read_only) == ("disk_shared", "/datasets", True)
    assert template.name is None and template.image_id is None and template.base_image is None
    assert add.options.image.base == f"python:{PY}-slim"
    assert add.options.image.prepare is None
    assert add.options.cwd == "/mnt/archil"
    assert app.functions["test_function_keeps_options_and_runs_locally.<locals>.add"] is add


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"vcpu_count": 0}, "vcpu_count"),
        ({"mem_size_mib": -1}, "mem_size_mib"),
        ({"kernel_variant": "gpu"}, "kernel_variant"),
        ({"ports": [70000]}, "ports"),
        ({"ports": 8080}, "ports"),
        ({"env": "A=1"}, "env"),
        ({"additional_volumes": ["/data"]}, "additional_volumes"),
        ({"additional_volumes": {"../etc": archil.Volume("d")}}, "path"),
        ({"additional_volumes": {"/mnt/archil/x": archil.Volume("d")}}, "mnt/archil"),
        ({"additional_volumes": {"/usr/data": archil.Volume("d")}}, "reserved"),
        ({"additional_volumes": {"/x": archil.Volume("disk_abc123")}}, "app's own disk"),
        ({"timeout": 0}, "timeout"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"additional_volumes": {"/data": "disk_x"}}, "additional_volumes"),
        ({"image": "python:3.11"}, "image"),
        ({"image": archil.Image.ubuntu("22.04")}, "Python"),
        ({"image": archil.Image.python("3.9" if PY != "3.9" else "3.10")}, "Python"),
    ],
)
def test_bad_options_fail_at_decoration_naming_the_field(kwargs, field) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    with pytest.raises(ValueError, match=field):
        app.function(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "", "disk_id": "d"}, "name"),
        ({"name": "a", "disk_id": ""}, "disk_id"),
        ({"name": "a", "disk_id": "../x"}, "disk_id"),
        ({"name": "a", "disk_id": "d", "disk_env": ""}, "disk_env"),
        ({"name": "a", "disk_id": "d", "api_key": " "}, "api_key"),
    ],
)
def test_bad_app_arguments(kwargs, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=field):
        archil.App(**kwargs)


def test_run_requires_a_command_and_allows_any_image() -> None:
    app = make_app()
    with pytest.raises(ValueError, match="command"):
        app.run(command="  ")

    @app.run(command="\n    echo hi\n    echo there\n    ", image=archil.Image.ubuntu("22.04"))
    def job() -> None:
        pass

    assert job.command == "echo hi\necho there\n"
    assert job.options.image.base == "ubuntu:22.04"
    assert job.options.image.prepare is None


def test_no_secret_in_reprs_or_pickles() -> None:
    app = make_app()

    @app.function()
    def uses_app() -> str:
        return repr(app)

    assert SECRET not in repr(app)
    assert SECRET not in repr(uses_app)
    # A function whose globals reference the app (and so its credentials) pickles without them.
    payload = encode_call(uses_app.fn, (), {})
    assert SECRET.encode() not in payload
    assert SECRET.encode() not in cloudpickle.dumps(uses_app)
    assert SECRET.encode() not in pickle.dumps(app)
    restored = pickle.loads(pickle.dumps(app))
    assert (restored.name, restored.disk_id) == ("t", "disk_abc123")


def test_volume_validation() -> None:
    with pytest.raises(ValueError, match="disk_id"):
        archil.Volume.from_disk_id("")
    with pytest.raises(ValueError, match="shared"):
        archil.Volume.from_disk_id("d", shared="yes")  # type: ignore[arg-type]
    disk = archil.Disk(id="dsk-0123456789abcdef", name="n", status="available")
    assert archil.Volume.from_disk(disk, shared=True) == archil.Volume(
        "dsk-0123456789abcdef", "production", True
    )


def test_decode_result_reraises_the_remote_exception_with_its_traceback() -> None:
    err = KeyError("missing")
    data = cloudpickle.dumps(
        {
            "ok": False,
            "exc": err,
            "type": "builtins.KeyError",
            "message": "'missing'",
            "traceback": "Traceback...\nKeyError: 'missing'",
        }
    )
    with pytest.raises(KeyError) as info:
        decode_result(data)
    assert isinstance(info.value.__cause__, archil.RemoteError)
    assert "Traceback..." in info.value.__cause__.remote_traceback

    data = cloudpickle.dumps(
        {"ok": False, "exc": None, "type": "mod.Custom", "message": "boom", "traceback": "tb"}
    )
    with pytest.raises(archil.RemoteError, match=r"mod\.Custom: boom"):
        decode_result(data)
    assert decode_result(cloudpickle.dumps({"ok": True, "value": [1, 2]})) == [1, 2]
    with pytest.raises(archil.RemoteError):
        decode_result(b"not a pickle")


def test_function_idle_ttl_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARCHIL_FUNCTION_IDLE_TTL", raising=False)
    app = make_app()
    assert app.function()(lambda: 1).options.template.idle_ttl_seconds == 600
    monkeypatch.setenv("ARCHIL_FUNCTION_IDLE_TTL", " 5 ")
    assert app.function()(lambda: 1).options.template.idle_ttl_seconds == 5
    assert app.run(command="true")(lambda: None).options.template.idle_ttl_seconds == 5
    for bad in ("0", "-1", "1.5", "ten", "86401"):
        monkeypatch.setenv("ARCHIL_FUNCTION_IDLE_TTL", bad)
        with pytest.raises(archil.ConfigurationError, match="ARCHIL_FUNCTION_IDLE_TTL") as info:
            app.function()
        assert repr(bad) in str(info.value)


def test_request_model_errors_name_fields_as_python_spells_them() -> None:
    with pytest.raises(ValueError, match="disk_id") as info:
        archil.ArchilMount()  # type: ignore[call-arg]
    assert "diskId" not in str(info.value)
    with pytest.raises(ValueError, match="read_only") as info:
        archil.AdditionalMount(path="/data", disk_id="d", read_only="maybe")  # type: ignore[arg-type]
    assert "readOnly" not in str(info.value)


def test_a_local_module_stays_pickled_by_value_while_any_encode_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A map encodes its calls on several threads: one encode that finishes must not
    # unregister the module while another is still pickling with it.
    from archil._callproto.payloads import _by_value

    (tmp_path / "archil_local_mod.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import archil_local_mod  # type: ignore[import-not-found]

    registry = cloudpickle.cloudpickle._PICKLE_BY_VALUE_MODULES
    first, second = _by_value(archil_local_mod.double), _by_value(archil_local_mod.double)
    first.__enter__()
    second.__enter__()
    assert "archil_local_mod" in registry
    first.__exit__(None, None, None)
    assert "archil_local_mod" in registry
    second.__exit__(None, None, None)
    assert "archil_local_mod" not in registry
