"""Sandboxes and sandbox images against a mocked control plane: paths, bodies, waits, errors."""

from __future__ import annotations

import json
import logging
import pickle
import re
from typing import Any

import httpx
import pydantic
import pytest
import respx

from archil._async.client import AsyncArchil
from archil._async.resources.sandboxes import AsyncSandbox
from archil._errors import (
    APITimeoutError,
    ArchilError,
    ConflictError,
    ImageBuildError,
    NotFoundError,
    SandboxError,
)
from archil._models import (
    CreateSandboxRequest,
    RegistryAuth,
    SandboxImage,
    SandboxMount,
)

from .helpers import (
    API_KEY,
    CHILD,
    DISK,
    IMG,
    SID,
    FakeClock,
    err,
    image_json,
    ok,
    sandbox_json,
)

NAME_RE = re.compile(r"^sbx-[0-9a-f]{16}$")
SECRET_VALUE = "env-secret-value-7f3a9c"


def body(route: respx.Route, index: int = 0) -> Any:
    return json.loads(route.calls[index].request.content)


def params(route: respx.Route, index: int = 0) -> dict[str, str]:
    return dict(route.calls[index].request.url.params)


# -- create -----------------------------------------------------------------------


async def test_create_sends_a_snake_case_body_and_waits(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    route = router.post("/api/sandboxes").mock(return_value=ok(sandbox_json(), 202))
    sandbox = await client.sandboxes.create(
        vcpu_count=2,
        mem_size_mib=1024,
        base_image="python:3.11-slim",
        env={"A": "1"},
        ports=[8080],
        mounts=[{"disk_id": DISK}],
        max_concurrent_execs=4,
    )
    assert isinstance(sandbox, AsyncSandbox)
    assert (sandbox.id, sandbox.name, sandbox.status) == (SID, "box", "running")
    assert repr(sandbox) == f"{type(sandbox).__name__}(id='{SID}', name='box', status='running')"
    request = route.calls[0].request
    assert request.method == "POST"
    assert params(route) == {"wait": "true"}
    assert request.headers["Idempotency-Key"]
    assert request.headers["Authorization"] == API_KEY
    sent = body(route)
    assert NAME_RE.match(sent.pop("name"))
    assert sent == {
        "vcpu_count": 2,
        "mem_size_mib": 1024,
        "base_image": "python:3.11-slim",
        "env": {"A": "1"},
        "ports": [8080],
        "enable_service_ingress": False,
        "mounts": [
            {"disk_id": DISK, "path": "/mnt/archil", "read_only": False, "conditional": False}
        ],
        "max_ttl_seconds": 86400,
        "idle_ttl_seconds": 1800,
        "max_concurrent_execs": 4,
    }


async def test_create_keeps_the_callers_name_and_mount_models(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    route = router.post("/api/sandboxes").mock(return_value=ok(sandbox_json(name="mine"), 202))
    mount = SandboxMount(disk_id=DISK, path="/data", read_only=True)
    await client.sandboxes.create(name="mine", mounts=[mount, {"disk_id": "dsk-2", "path": "/b"}])
    sent = body(route)
    assert sent["name"] == "mine"
    assert [m["path"] for m in sent["mounts"]] == ["/data", "/b"]
    assert sent["mounts"][0]["read_only"] is True


async def test_create_polls_a_pending_sandbox_until_it_runs(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    router.post("/api/sandboxes").mock(return_value=ok(sandbox_json("pending"), 202))
    get = router.get(f"/api/sandboxes/{SID}").mock(
        side_effect=[
            ok(sandbox_json("pending")),
            ok(sandbox_json("pending")),
            ok(sandbox_json("pending")),
            ok(sandbox_json("pending")),
            ok(sandbox_json("pending")),
            ok(sandbox_json("running")),
        ]
    )
    sandbox = await client.sandboxes.create()
    assert sandbox.status == "running"
    assert get.call_count == 6
    assert clock.sleeps == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]


async def test_a_sandbox_that_fails_to_start_raises(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    router.post("/api/sandboxes").mock(return_value=ok(sandbox_json("pending"), 202))
    router.get(f"/api/sandboxes/{SID}").mock(
        return_value=ok(sandbox_json("failed", exit_reason="the image could not be pulled"))
    )
    with pytest.raises(SandboxError) as info:
        await client.sandboxes.create()
    error = info.value
    assert (error.sandbox_id, error.status) == (SID, "failed")
    assert error.exit_reason == "the image could not be pulled"
    assert "failed" in str(error) and "could not be pulled" in str(error)
    again = pickle.loads(pickle.dumps(error))
    assert (again.status, again.exit_reason) == ("failed", error.exit_reason)


async def test_create_without_waiting(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.post("/api/sandboxes").mock(return_value=ok(sandbox_json("pending"), 202))
    get = router.get(f"/api/sandboxes/{SID}").mock(return_value=ok(sandbox_json()))
    sandbox = await client.sandboxes.create(wait=False)
    assert sandbox.status == "pending"
    assert params(route) == {"wait": "false"}
    assert get.call_count == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mounts": [{"disk_id": DISK, "path": "data"}]}, "path"),
        ({"mounts": [{"disk_id": DISK, "path": "/mnt/../etc"}]}, "path"),
        (
            {"mounts": [{"disk_id": DISK, "path": "/a"}, {"disk_id": "dsk-2", "path": "/a"}]},
            "mounts[1].path",
        ),
        (
            {"mounts": [{"disk_id": DISK, "path": "/a"}, {"disk_id": DISK, "path": "/b"}]},
            "mounts[1].disk_id",
        ),
        ({"mounts": [{"disk_id": DISK}, {"disk_id": "dsk-2"}]}, "mounts[0].path"),
        ({"mounts": [{"disk_id": DISK, "path": "/usr/local"}]}, "reserved"),
        ({"max_ttl_seconds": 0}, "max_ttl_seconds"),
        ({"idle_ttl_seconds": -1}, "idle_ttl_seconds"),
        ({"ports": [70000]}, "ports"),
        ({"ports": [0]}, "ports"),
        ({"base_image": "python:3.11", "image_id": IMG}, "mutually exclusive"),
        ({"vcpu_count": 0}, "vcpu_count"),
        ({"mem_size_mib": 1}, "mem_size_mib"),
        ({"name": "bad name"}, "name"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"kernel_variant": "huge"}, "kernel_variant"),
        ({"mounts": {"disk_id": DISK}}, "mounts must be a list"),
        ({"mounts": 3}, "mounts must be a list"),
        ({"ports": 8080}, "ports must be a list"),
        ({"ports": "8080"}, "ports must be a list"),
        ({"env": "A=1"}, "env must be a mapping"),
        ({"network": ["deny"]}, "network must be a mapping"),
    ],
)
async def test_bad_input_is_rejected_before_any_request(
    client: AsyncArchil, router: respx.MockRouter, kwargs: dict[str, Any], field: str
) -> None:
    route = router.post("/api/sandboxes").mock(return_value=ok(sandbox_json(), 202))
    with pytest.raises(ValueError) as info:
        await client.sandboxes.create(**kwargs)
    assert field in str(info.value)
    assert route.call_count == 0
    assert router.calls.call_count == 0


async def test_create_from_a_template(client: AsyncArchil, router: respx.MockRouter) -> None:
    route = router.post("/api/sandboxes").mock(return_value=ok(sandbox_json(), 202))
    template = CreateSandboxRequest(vcpu_count=2, mounts=[SandboxMount(disk_id=DISK)])
    await client.sandboxes.create_from(template)
    await client.sandboxes.create_from(template.model_copy(update={"name": "named"}))
    first, second = body(route, 0), body(route, 1)
    assert NAME_RE.match(first["name"]) and first["vcpu_count"] == 2
    assert second["name"] == "named"
    assert template.name is None
    with pytest.raises(TypeError):
        await client.sandboxes.create_from({"vcpu_count": 1})  # type: ignore[arg-type]


async def test_a_lost_answer_then_409_finds_the_sandbox_by_its_generated_name(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    """A server that ignores idempotency keys: the first attempt created it, the retry conflicts."""
    seen: list[httpx.Request] = []

    def create(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ReadError("connection lost after the request was sent")
        return err(409, "a sandbox with this name already exists", "conflict")

    router.post("/api/sandboxes").mock(side_effect=create)
    listing = router.get("/api/sandboxes").mock(
        side_effect=lambda request: ok(
            {
                "sandboxes": [
                    sandbox_json(sandbox_id=CHILD, name="someone-else"),
                    sandbox_json(name=json.loads(seen[0].content)["name"]),
                ]
            }
        )
    )
    sandbox = await client.sandboxes.create()
    assert sandbox.id == SID
    assert len(seen) == 2
    assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]
    assert json.loads(seen[0].content)["name"] == json.loads(seen[1].content)["name"]
    assert listing.call_count == 1


class Interrupted(BaseException):
    """What Ctrl-C or a cancelled task looks like to the code it interrupts."""


async def test_an_interrupted_create_removes_the_sandbox_it_may_have_made(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    seen: list[httpx.Request] = []

    def create(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise Interrupted()

    router.post("/api/sandboxes").mock(side_effect=create)
    router.get("/api/sandboxes").mock(
        side_effect=lambda request: ok(
            {
                "sandboxes": [
                    sandbox_json(sandbox_id=CHILD, name="someone-else"),
                    sandbox_json(name=json.loads(seen[0].content)["name"]),
                ]
            }
        )
    )
    stop = router.post(f"/api/sandboxes/{SID}/stop").mock(
        return_value=ok(sandbox_json(status="stopped"))
    )
    delete = router.delete(f"/api/sandboxes/{SID}").mock(return_value=httpx.Response(204))
    other = router.delete(f"/api/sandboxes/{CHILD}").mock(return_value=httpx.Response(204))
    with pytest.raises(Interrupted):
        await client.sandboxes.create()
    assert (stop.call_count, delete.call_count, other.call_count) == (1, 1, 0)

    # A sandbox with the caller's own name is the caller's business: left alone.
    seen.clear()
    with pytest.raises(Interrupted):
        await client.sandboxes.create(name="mine")
    assert (stop.call_count, delete.call_count) == (1, 1)


async def test_a_409_for_the_callers_own_name_is_raised(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    router.post("/api/sandboxes").mock(return_value=err(409, "name taken"))
    listing = router.get("/api/sandboxes").mock(return_value=ok({"sandboxes": []}))
    with pytest.raises(ConflictError):
        await client.sandboxes.create(name="taken")
    assert listing.call_count == 0


async def test_a_409_for_a_generated_name_nobody_has_is_raised(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    router.post("/api/sandboxes").mock(return_value=err(409, "disk in use"))
    router.get("/api/sandboxes").mock(return_value=ok({"sandboxes": [sandbox_json()]}))
    with pytest.raises(ConflictError):
        await client.sandboxes.create()


# -- get, list, find --------------------------------------------------------------


async def test_get_list_and_find(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get(f"/api/sandboxes/{SID}").mock(return_value=ok(sandbox_json()))
    listing = router.get("/api/sandboxes").mock(
        return_value=ok(
            {"sandboxes": [sandbox_json(), sandbox_json(sandbox_id=CHILD, name="other")]}
        )
    )
    assert (await client.sandboxes.get(SID)).name == "box"
    everything = await client.sandboxes.list()
    assert [s.id for s in everything] == [SID, CHILD]
    await client.sandboxes.list(disk_id=DISK)
    assert params(listing, 0) == {}
    assert params(listing, 1) == {"filesystem": DISK}
    found = await client.sandboxes.find("other")
    assert found is not None and found.id == CHILD
    assert await client.sandboxes.find("nobody") is None


async def test_an_empty_listing(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get("/api/sandboxes").mock(side_effect=[ok(None), ok({"sandboxes": None})])
    assert await client.sandboxes.list() == []
    assert await client.sandboxes.list() == []


async def test_unknown_sandbox_and_bad_ids(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get(f"/api/sandboxes/{SID}").mock(return_value=err(404, "no such sandbox"))
    with pytest.raises(NotFoundError):
        await client.sandboxes.get(SID)
    for bad in ("", "a/b", "../x"):
        with pytest.raises(ValueError, match="sandbox_id"):
            await client.sandboxes.get(bad)
    with pytest.raises(ValueError, match="disk_id"):
        await client.sandboxes.list(disk_id="a/b")


async def test_a_record_with_unknown_fields_still_reads(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    record = sandbox_json(
        mounts=[{"disk_id": DISK, "path": "/mnt/archil", "attached_at": "soon"}],
        brand_new_field={"x": 1},
    )
    router.get(f"/api/sandboxes/{SID}").mock(return_value=ok(record))
    sandbox = await client.sandboxes.get(SID)
    assert sandbox.mounts[0].disk_id == DISK


# -- lifecycle --------------------------------------------------------------------


async def handle(client: AsyncArchil, router: respx.MockRouter, status: str) -> AsyncSandbox:
    router.get(f"/api/sandboxes/{SID}").mock(return_value=ok(sandbox_json(status)))
    sandbox = await client.sandboxes.get(SID)
    router.routes.clear()
    return sandbox


async def test_start_with_mounts_and_wait(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    sandbox = await handle(client, router, "stopped")
    route = router.post(f"/api/sandboxes/{SID}/start").mock(
        return_value=ok(sandbox_json("pending"), 202)
    )
    router.get(f"/api/sandboxes/{SID}").mock(return_value=ok(sandbox_json("running")))
    assert await sandbox.start(mounts=[{"disk_id": DISK}]) is sandbox
    assert sandbox.status == "running"
    assert params(route) == {"wait": "true"}
    assert body(route) == {
        "mounts": [
            {"disk_id": DISK, "path": "/mnt/archil", "read_only": False, "conditional": False}
        ]
    }
    await sandbox.start(wait=False)
    assert route.calls[1].request.content == b""
    assert params(route, 1) == {"wait": "false"}


async def test_stop_waits_while_stopping(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    sandbox = await handle(client, router, "running")
    router.post(f"/api/sandboxes/{SID}/stop").mock(return_value=ok(sandbox_json("stopping"), 202))
    router.get(f"/api/sandboxes/{SID}").mock(
        side_effect=[ok(sandbox_json("stopping")), ok(sandbox_json("stopped"))]
    )
    await sandbox.stop()
    assert sandbox.status == "stopped"
    assert clock.sleeps == [0.05, 0.1]


async def test_pause_waits_and_raises_when_it_does_not_pause(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    sandbox = await handle(client, router, "running")
    router.post(f"/api/sandboxes/{SID}/pause").mock(
        return_value=ok(sandbox_json("pausing", checkpoint="ck-1"), 202)
    )
    router.get(f"/api/sandboxes/{SID}").mock(
        side_effect=[
            ok(sandbox_json("paused", checkpoint="ck-1")),
            ok(sandbox_json("failed", exit_reason="out of disk")),
        ]
    )
    await sandbox.pause()
    assert (sandbox.status, sandbox.checkpoint) == ("paused", "ck-1")
    with pytest.raises(SandboxError) as info:
        await sandbox.pause()
    assert info.value.status == "failed" and info.value.exit_reason == "out of disk"


async def test_resume_delete_and_set_timeout(client: AsyncArchil, router: respx.MockRouter) -> None:
    sandbox = await handle(client, router, "paused")
    resume = router.post(f"/api/sandboxes/{SID}/resume").mock(
        return_value=ok(sandbox_json("running"), 200)
    )
    timeout = router.post(f"/api/sandboxes/{SID}/timeout").mock(
        return_value=ok(sandbox_json(idle_ttl_seconds=60))
    )
    delete = router.delete(f"/api/sandboxes/{SID}").mock(return_value=httpx.Response(204))
    await sandbox.resume()
    assert params(resume) == {"wait": "true"}
    await sandbox.set_timeout(600, idle_ttl_seconds=60)
    assert body(timeout) == {"timeout": 600, "idle_ttl_seconds": 60}
    assert sandbox.idle_ttl_seconds == 60
    await sandbox.set_timeout(idle_ttl_seconds=0)
    assert body(timeout, 1) == {"idle_ttl_seconds": 0}
    with pytest.raises(ValueError):
        await sandbox.set_timeout()
    assert timeout.call_count == 2
    assert await sandbox.delete() is None
    assert delete.call_count == 1


async def test_fork_a_given_checkpoint(client: AsyncArchil, router: respx.MockRouter) -> None:
    sandbox = await handle(client, router, "stopped")
    fork = router.post(f"/api/sandboxes/{SID}/fork").mock(
        return_value=ok(sandbox_json(sandbox_id=CHILD, name="kid"), 202)
    )
    pause = router.post(f"/api/sandboxes/{SID}/pause").mock(return_value=ok(sandbox_json()))
    child = await sandbox.fork(name="kid", checkpoint="ck-7")
    assert child.id == CHILD and child.status == "running"
    assert body(fork) == {"name": "kid", "checkpoint": "ck-7"}
    assert params(fork) == {"wait": "true"}
    assert pause.call_count == 0


async def test_fork_a_live_sandbox_pauses_forks_and_resumes_it(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    sandbox = await handle(client, router, "running")
    order: list[str] = []

    def step(name: str, response: httpx.Response) -> Any:
        def record(request: httpx.Request) -> httpx.Response:
            order.append(name)
            return response

        return record

    router.post(f"/api/sandboxes/{SID}/pause").mock(
        side_effect=step("pause", ok(sandbox_json("pausing", checkpoint="ck-1"), 202))
    )
    source_states = iter(
        [sandbox_json("paused", checkpoint="ck-1"), sandbox_json("pending"), sandbox_json()]
    )
    router.get(f"/api/sandboxes/{SID}").mock(
        side_effect=lambda request: (order.append("get source"), ok(next(source_states)))[1]
    )
    fork = router.post(f"/api/sandboxes/{SID}/fork").mock(
        side_effect=step("fork", ok(sandbox_json("pending", sandbox_id=CHILD), 202))
    )
    resume = router.post(f"/api/sandboxes/{SID}/resume").mock(
        side_effect=step("resume", ok(sandbox_json("pending"), 202))
    )
    router.get(f"/api/sandboxes/{CHILD}").mock(
        side_effect=step("get child", ok(sandbox_json(sandbox_id=CHILD)))
    )
    child = await sandbox.fork()
    assert child.id == CHILD and child.status == "running"
    sent = body(fork)
    assert NAME_RE.match(sent["name"]) and sent["checkpoint"] == "ck-1"
    assert params(fork) == {"wait": "false"}
    assert params(resume) == {"wait": "false"}
    assert order == [
        "pause",
        "get source",
        "fork",
        "resume",
        "get child",
        "get source",
        "get source",
    ]
    assert sandbox.status == "running"


async def test_fork_of_a_paused_sandbox_leaves_it_paused(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    sandbox = await handle(client, router, "paused")
    router.post(f"/api/sandboxes/{SID}/pause").mock(
        return_value=ok(sandbox_json("paused", checkpoint="ck-2"), 200)
    )
    fork = router.post(f"/api/sandboxes/{SID}/fork").mock(
        return_value=ok(sandbox_json(sandbox_id=CHILD), 202)
    )
    resume = router.post(f"/api/sandboxes/{SID}/resume").mock(return_value=ok(sandbox_json()))
    await sandbox.fork(name="copy")
    assert body(fork) == {"name": "copy", "checkpoint": "ck-2"}
    assert params(fork) == {"wait": "true"}
    assert resume.call_count == 0


async def test_the_source_is_resumed_even_when_the_fork_fails(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    sandbox = await handle(client, router, "running")
    router.post(f"/api/sandboxes/{SID}/pause").mock(
        return_value=ok(sandbox_json("paused", checkpoint="ck-3"), 202)
    )
    router.post(f"/api/sandboxes/{SID}/fork").mock(return_value=err(400, "bad checkpoint"))
    resume = router.post(f"/api/sandboxes/{SID}/resume").mock(return_value=ok(sandbox_json()))
    with pytest.raises(Exception, match="bad checkpoint"):
        await sandbox.fork(name="copy")
    assert resume.call_count == 1


async def test_fork_finds_its_child_after_a_409(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    sandbox = await handle(client, router, "stopped")
    names: list[str] = []

    def fork(request: httpx.Request) -> httpx.Response:
        names.append(json.loads(request.content)["name"])
        return err(409, "name exists")

    router.post(f"/api/sandboxes/{SID}/fork").mock(side_effect=fork)
    router.get("/api/sandboxes").mock(
        side_effect=lambda request: ok(
            {"sandboxes": [sandbox_json(sandbox_id=CHILD, name=names[0])]}
        )
    )
    child = await sandbox.fork(checkpoint="ck-1")
    assert child.id == CHILD


# -- ports and connections ---------------------------------------------------------


async def test_ports(client: AsyncArchil, router: respx.MockRouter) -> None:
    sandbox = await handle(client, router, "running")
    put = router.put(f"/api/sandboxes/{SID}/ports/8080").mock(
        side_effect=[
            ok({"port": 8080, "hostname": "8080-box.example"}, 201),
            ok({"port": 8080, "hostname": "8080-box.example"}, 200),
        ]
    )
    router.get(f"/api/sandboxes/{SID}/ports").mock(
        return_value=ok({"ports": [{"port": 8080, "hostname": "8080-box.example"}]})
    )
    delete = router.delete(f"/api/sandboxes/{SID}/ports/8080").mock(
        return_value=httpx.Response(204)
    )
    port = await sandbox.expose_port(8080)
    assert (port.port, port.hostname) == (8080, "8080-box.example")
    assert (await sandbox.expose_port(8080)).port == 8080
    assert [p.port for p in await sandbox.list_ports()] == [8080]
    await sandbox.unexpose_port(8080)
    assert put.call_count == 2 and delete.call_count == 1
    for bad in (0, 65536, True):
        with pytest.raises(ValueError, match="port"):
            await sandbox.expose_port(bad)


async def test_connect_hides_the_token(client: AsyncArchil, router: respx.MockRouter) -> None:
    sandbox = await handle(client, router, "running")
    route = router.post(f"/api/sandboxes/{SID}/connections").mock(
        return_value=ok(
            {"url": "wss://x.example/ws?token=tok-123", "expires_at": "2030-01-01T00:00:00Z"}
        )
    )
    connection = await sandbox.connect()
    assert connection.url == "wss://x.example/ws?token=tok-123"
    assert "tok-123" not in repr(connection) and "tok-123" not in str(connection)
    assert route.calls[0].request.headers["Idempotency-Key"]


# -- secrets ----------------------------------------------------------------------


async def test_env_values_stay_out_of_reprs_logs_and_errors(
    client: AsyncArchil, router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    router.post("/api/sandboxes").mock(
        side_effect=[err(503, "busy"), ok(sandbox_json("pending"), 202)]
    )
    router.get(f"/api/sandboxes/{SID}").mock(return_value=ok(sandbox_json("failed")))
    with pytest.raises(SandboxError) as info:
        await client.sandboxes.create(env={"TOKEN": SECRET_VALUE})
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    assert SECRET_VALUE not in caplog.text
    assert API_KEY not in caplog.text
    for text in (str(info.value), repr(info.value), repr(pickle.dumps(info.value))):
        assert SECRET_VALUE not in text
    request = CreateSandboxRequest(env={"TOKEN": SECRET_VALUE})
    assert SECRET_VALUE not in repr(request) and SECRET_VALUE not in str(request)
    assert "TOKEN" in repr(request)
    with pytest.raises(pydantic.ValidationError) as bad:
        CreateSandboxRequest(env={"TOKEN": SECRET_VALUE, "2X": SECRET_VALUE})
    assert SECRET_VALUE not in str(bad.value)


async def test_handles_are_not_picklable(client: AsyncArchil, router: respx.MockRouter) -> None:
    sandbox = await handle(client, router, "running")
    for thing in (sandbox, client.sandboxes):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(thing)


# -- images -----------------------------------------------------------------------


async def test_build_polls_until_ready(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    post = router.post("/api/images").mock(return_value=ok(image_json(), 202))
    get = router.get(f"/api/images/{IMG}").mock(
        side_effect=[
            ok(image_json()),
            ok(image_json()),
            ok(image_json("ready", digest="sha256:abc")),
        ]
    )
    image = await client.images.build("python:3.11-slim")
    assert isinstance(image, SandboxImage)
    assert (image.status, image.digest) == ("ready", "sha256:abc")
    assert body(post) == {"source": "python:3.11-slim"}
    assert post.calls[0].request.headers["Idempotency-Key"]
    assert get.call_count == 3
    assert clock.sleeps == [0.1, 0.2, 0.4]


async def test_build_of_a_ready_image_returns_at_once(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    router.post("/api/images").mock(return_value=ok(image_json("ready"), 202))
    assert (await client.images.build("python:3.11-slim")).status == "ready"
    assert clock.sleeps == []


async def test_build_with_registry_auth_hides_the_password(
    client: AsyncArchil, router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    post = router.post("/api/images").mock(return_value=ok(image_json("ready", private=True)))
    await client.images.build(
        "ghcr.io/me/private:1", registry_auth={"username": "me", "password": "pw-9f8e7d"}
    )
    assert body(post)["registry_auth"] == {"username": "me", "password": "pw-9f8e7d"}
    assert "pw-9f8e7d" not in caplog.text
    assert "pw-9f8e7d" not in repr(RegistryAuth(username="me", password="pw-9f8e7d"))


async def test_a_failed_build_raises(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    router.post("/api/images").mock(return_value=ok(image_json(), 202))
    router.get(f"/api/images/{IMG}").mock(
        return_value=ok(
            image_json(
                "failed",
                failure_reason="invalid_source",
                failure_message="python:3.99 is not on this machine",
            )
        )
    )
    with pytest.raises(ImageBuildError) as info:
        await client.images.build("python:3.99")
    text = str(info.value)
    assert "python:3.99" in text and "invalid_source" in text
    assert "is not on this machine" in text
    assert info.value.image_id == IMG


async def test_an_unknown_failure_reason_still_raises_a_build_error(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    router.post("/api/images").mock(
        return_value=ok(image_json("failed", failure_reason="quota_exceeded"), 202)
    )
    with pytest.raises(ImageBuildError, match="quota_exceeded"):
        await client.images.build("python:3.11")


async def test_an_interrupted_build_is_requested_again(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    post = router.post("/api/images").mock(
        side_effect=[
            ok(image_json(), 202),
            ok(image_json("failed", failure_reason="interrupted"), 202),
            ok(image_json(), 202),
        ]
    )
    router.get(f"/api/images/{IMG}").mock(
        side_effect=[
            ok(image_json("failed", failure_reason="interrupted")),
            ok(image_json("ready")),
        ]
    )
    assert (await client.images.build("python:3.11")).status == "ready"
    assert post.call_count == 3


async def test_interrupted_builds_are_retried_three_times(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    post = router.post("/api/images").mock(
        return_value=ok(image_json("failed", failure_reason="interrupted"), 202)
    )
    with pytest.raises(ImageBuildError, match="interrupted"):
        await client.images.build("python:3.11")
    assert post.call_count == 4


async def test_a_build_that_takes_too_long_times_out(
    client: AsyncArchil, router: respx.MockRouter, clock: FakeClock
) -> None:
    post = router.post("/api/images").mock(return_value=ok(image_json(), 202))
    router.get(f"/api/images/{IMG}").mock(return_value=ok(image_json()))
    with pytest.raises(APITimeoutError, match="still building"):
        await client.images.build("python:3.11", timeout=300)
    assert sum(clock.sleeps) == pytest.approx(300)
    # A build still building two minutes after it was requested is requested again.
    assert post.call_count == 3


async def test_build_rejects_bad_input_before_any_request(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    for source in ("", "python 3.11", " python"):
        with pytest.raises(ValueError, match="source"):
            await client.images.build(source)
    with pytest.raises(ValueError, match="timeout"):
        await client.images.build("python:3.11", timeout=-1)
    assert router.calls.call_count == 0


async def test_get_an_image(client: AsyncArchil, router: respx.MockRouter) -> None:
    router.get(f"/api/images/{IMG}").mock(return_value=ok(image_json("ready")))
    image = await client.images.get(IMG)
    assert isinstance(image, SandboxImage) and image.status == "ready"


async def test_kernel_variant_the_server_ignores_is_a_clear_error(
    client: AsyncArchil, router: respx.MockRouter
) -> None:
    router.post("/api/sandboxes").mock(return_value=ok(sandbox_json(), 202))
    stop = router.post(f"/api/sandboxes/{SID}/stop").mock(return_value=ok(sandbox_json("stopped")))
    delete = router.delete(f"/api/sandboxes/{SID}").mock(return_value=httpx.Response(204))
    with pytest.raises(ArchilError, match="kernel_variant='extended' is an archil extension"):
        await client.sandboxes.create(kernel_variant="extended")
    assert stop.call_count == 1 and delete.call_count == 1
    router.post("/api/sandboxes").mock(
        return_value=ok(sandbox_json(kernel_variant="extended"), 202)
    )
    sandbox = await client.sandboxes.create(kernel_variant="extended")
    assert sandbox.data.kernel_variant == "extended"
