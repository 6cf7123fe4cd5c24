"""``archil run FILE.py[::NAME] [ARGS...]``: run an app's function or job from the shell.

The file is imported as a module (its ``if __name__ == "__main__":`` block does
not run), the function or job is picked (the only one, or the one named), the
function's typed parameters become ``--options``, and the call runs as
``fn.remote()`` does: output streamed, value printed, the sandbox deleted at
the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import click

from ._base import ArchilCommand, fail
from ._output import progress

if TYPE_CHECKING:
    from .._callproto import FunctionSpec
    from ..decl.app import Function, Job

__all__ = ["load_targets", "run"]

_FLAGS = ("detach", "quiet", "json")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")


def _import_file(path: Path) -> types.ModuleType:
    """Import ``path`` as a module named after it; ``__name__`` is not ``"__main__"``."""
    if not path.is_file():
        raise fail(f"{path}: no such file")
    stem = _NOT_NAME.sub("_", path.stem) or "app"
    name = stem if stem not in sys.modules else f"_archil_run_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise fail(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        spec.loader.exec_module(module)
    except click.ClickException:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        detail = f": {lines[0]}" if lines else ""
        raise fail(f"importing {path} failed: {type(exc).__name__}{detail}") from exc
    return module


def load_targets(path: Path) -> dict[str, Function[..., Any] | Job]:
    """The functions and jobs that ``path`` declares, by name."""
    from ..decl.app import App, Function, Job

    module = _import_file(path)
    found: dict[str, Function[..., Any] | Job] = {}
    for value in list(vars(module).values()):
        if isinstance(value, (Function, Job)):
            found.setdefault(value.name, value)
        elif isinstance(value, App):
            for fn in value.functions.values():
                found.setdefault(fn.name, fn)
    return found


def _pick(target: str) -> Function[..., Any] | Job:
    raw_path, _, name = target.partition("::")
    path = Path(raw_path).expanduser()
    found = load_targets(path)
    if not found:
        raise fail(f"{path} declares no archil function or job (@app.function or @app.run)")
    listed = ", ".join(sorted(found))
    if name:
        if name not in found:
            raise fail(f"{path} has no function or job {name!r}; it has: {listed}")
        return found[name]
    if len(found) > 1:
        first = sorted(found)[0]
        raise fail(
            f"{path} declares several functions and jobs ({listed}); "
            f"name one: archil run {raw_path}::{first}"
        )
    return next(iter(found.values()))


# -- the function's parameters as options ---------------------------------------------


def _click_type(annotation: Any) -> type | None:
    """``int``, ``float``, ``bool`` or ``str`` for an annotation (``X | None`` too); else None."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return str
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _click_type(members[0])
        return None
    if annotation in (int, float, bool, str):
        return typing.cast(type, annotation)
    return None


def _parameters(fn: Function[..., Any]) -> tuple[list[click.Parameter], list[str]]:
    """The options of ``fn``'s parameters, and the names to pass positionally."""
    signature = inspect.signature(fn.fn)
    try:
        hints = typing.get_type_hints(fn.fn)
    except Exception:
        hints = {}
    options: list[click.Parameter] = []
    positional: list[str] = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, param.annotation)
        kind = _click_type(annotation)
        has_default = param.default is not inspect.Parameter.empty
        if kind is None:
            if has_default:
                continue
            raise fail(
                f"parameter {param.name!r} of {fn.name} is a {annotation!r}: only int, float, "
                "bool and str parameters can be given on the command line"
            )
        if param.kind is param.POSITIONAL_ONLY:
            positional.append(param.name)
        flag = param.name.replace("_", "-")
        help_text = f"{kind.__name__} parameter {param.name!r}" + (
            "" if has_default else " (required)"
        )
        switch = f"--{flag}/--no-{flag}" if kind is bool else f"--{flag}"
        decls = [switch, param.name]
        extra: dict[str, Any] = {"default": param.default} if has_default else {"required": True}
        if kind is not bool:
            extra["type"] = kind
        options.append(click.Option(decls, show_default=has_default, help=help_text, **extra))
    return options, positional


def _flag_options(taken: set[str]) -> list[click.Parameter]:
    """``archil run``'s own flags, accepted after the target too (unless a parameter has the name)."""
    helps = {
        "detach": "Start it and print its id instead of waiting.",
        "quiet": "Do not print the container's output.",
        "json": "Print the returned value as JSON.",
    }
    return [
        click.Option([f"--{name}", f"_archil_{name}"], is_flag=True, help=helps[name])
        for name in _FLAGS
        if name not in taken
    ]


def _parse_call(
    ctx: click.Context, target: str, obj: Function[..., Any] | Job, args: list[str]
) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, bool]]:
    """Parse ``args`` against the target's options: its positional args, keyword args and flags."""
    from ..decl.app import Function

    if isinstance(obj, Function):
        options, positional = _parameters(obj)
        doc = inspect.getdoc(obj.fn) or f"Run the function {obj.name} remotely."
    else:
        options, positional = [], []
        doc = f"Run the job {obj.name} remotely."
    taken = {str(o.name) for o in options}
    command = ArchilCommand(
        target,
        params=[*options, *_flag_options({n.replace("_", "-") for n in taken})],
        callback=lambda **kw: kw,
        help=doc,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    with command.make_context(f"{ctx.command_path} {target}", args) as sub:
        values: dict[str, Any] = command.invoke(sub)
    flags = {name: bool(values.pop(f"_archil_{name}", False)) for name in _FLAGS}
    call_args = tuple(values.pop(name) for name in positional)
    return call_args, values, flags


# -- the call -----------------------------------------------------------------------------


def _print_value(value: Any, as_json: bool) -> None:
    if as_json:
        try:
            text = json.dumps(value, indent=2)
        except (TypeError, ValueError) as exc:
            raise fail(
                f"the returned value ({type(value).__name__}) is not JSON: {exc}; run without --json"
            ) from None
        sys.stdout.write(text + "\n")
    elif value is None:
        return
    elif isinstance(value, str):
        sys.stdout.write(value + ("" if value.endswith("\n") else "\n"))
    else:
        import pprint

        sys.stdout.write(pprint.pformat(value) + "\n")
    sys.stdout.flush()


def _spec(obj: Function[..., Any] | Job, quiet: bool) -> FunctionSpec:
    spec = obj.options
    return dataclasses.replace(spec, stream_logs=False) if quiet else spec


def _warn_if_embedded(obj: Function[..., Any] | Job) -> None:
    if obj.app.client().config.local:
        click.echo(
            "archil: warning: the embedded local control plane stops when this command ends, "
            "and the detached work with it, unless `archil local serve` runs on its data "
            "directory",
            err=True,
        )


def _detach_job(obj: Job, as_json: bool) -> None:
    """Start the job's command in its sandbox and leave it running; print the sandbox id."""
    from .._callproto import REMOTE_ENV, CallPaths
    from .._secrets import merged_env
    from .._sync.resources.sandbox_handle import discard_sandbox
    from .._sync.runner import CallRunner

    client = obj.app.client()
    runner = CallRunner(client)
    spec = obj.options
    _warn_if_embedded(obj)
    sandbox = runner._sandbox(spec, CallPaths.new().call_id[:20])
    try:
        if sandbox.idle_ttl_seconds:
            sandbox.set_timeout(idle_ttl_seconds=0)
        process = sandbox.run(
            obj.command,
            env={**spec.env, **merged_env(spec.secrets), REMOTE_ENV: "1"},
            cwd=spec.cwd,
            timeout_seconds=spec.timeout,
            collect_output=False,
        )
    except BaseException:
        discard_sandbox(sandbox)
        raise
    process.close()
    if as_json:
        _print_value({"sandbox_id": sandbox.id, "process_id": process.id}, True)
        return
    sys.stdout.write(sandbox.id + "\n")
    sys.stdout.flush()
    click.echo(
        f"archil: job {obj.name} started in sandbox {sandbox.id} (process {process.id})\n"
        f"  output:  archil sandboxes logs {sandbox.id} {process.id} --follow\n"
        f"  stop it: archil sandboxes rm {sandbox.id}",
        err=True,
    )


def _detach_function(
    obj: Function[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], as_json: bool
) -> None:
    """Spawn the call and leave it running; print its id (``archil.FunctionCall``'s)."""
    _warn_if_embedded(obj)
    call = obj.spawn(*args, **kwargs)
    if as_json:
        _print_value({"object_id": call.object_id}, True)
        return
    sys.stdout.write(call.object_id + "\n")
    sys.stdout.flush()
    click.echo(
        f"archil: {obj.name} started as call {call.object_id}; its value: "
        f"archil.FunctionCall.from_id({call.object_id!r}, app=app).get()",
        err=True,
    )


def _call(
    obj: Function[..., Any] | Job,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    flags: dict[str, bool],
) -> Any:
    from .._callproto import LogPrinter
    from .._sync.runner import CallRunner
    from ..decl.app import Function

    quiet, as_json = flags["quiet"], flags["json"]
    printer = LogPrinter(stdout=sys.stderr) if as_json else None
    runner = CallRunner(obj.app.client(), printer)
    spec = _spec(obj, quiet)
    if not quiet:
        # The base image is built (or found) here so that its progress shows; the runner
        # reuses it. Preparation steps, when the image has any, print their own output.
        with progress(f"building image {spec.image.base}", done="ready"):
            runner._image_id(spec.image.base)
        click.echo(f"archil: running {obj.name} on disk {obj.app.disk_id}", err=True)
    if isinstance(obj, Function):
        return runner.call(spec, obj.fn, args, kwargs)
    return runner.run(spec, obj.command, obj.name)


@click.command(
    cls=ArchilCommand,
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
    epilog=(
        "\b\nExamples:\n"
        "  archil run examples/declarative_simple.py --name Ada\n"
        "  archil run examples/declarative_ml_training.py::train --seed 42 --json\n"
        "  archil run examples/run_command.py --detach\n"
        "  archil run app.py::train --help      # the function's own options"
    ),
)
@click.option("--detach", is_flag=True, help="Start it and print its id instead of waiting.")
@click.option("--quiet", "-q", is_flag=True, help="Do not print the container's output.")
@click.option("--json", "as_json", is_flag=True, help="Print the returned value as JSON.")
@click.option("--help", "-h", "show_help", is_flag=True, help="Show this message and exit.")
@click.argument("target", metavar="FILE.py[::NAME]", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(
    detach: bool,
    quiet: bool,
    as_json: bool,
    show_help: bool,
    target: str | None,
    args: tuple[str, ...],
) -> int:
    """Run a function or job of an app in a sandbox and print what it returns.

    FILE.py is imported (its __main__ block does not run); NAME picks the
    function or job when it declares several. The function's int, float,
    bool and str parameters are options (`archil run FILE.py::NAME --help`
    lists them). The container's output is streamed (to stderr with --json),
    and Ctrl-C stops and deletes the sandbox (exit code 130).
    """
    ctx = click.get_current_context()
    if show_help:
        click.echo(ctx.get_help())
        return 0
    if target is None:
        raise click.UsageError("missing FILE.py[::NAME]: the file that declares the app", ctx)
    obj = _pick(target)
    call_args, kwargs, flags = _parse_call(ctx, target, obj, list(args))
    flags = {
        "detach": detach or flags["detach"],
        "quiet": quiet or flags["quiet"],
        "json": as_json or flags["json"],
    }
    from .._errors import ArchilError
    from ..decl.app import Function

    try:
        if flags["detach"]:
            if isinstance(obj, Function):
                _detach_function(obj, call_args, kwargs, flags["json"])
            else:
                _detach_job(obj, flags["json"])
            return 0
        value = _call(obj, call_args, kwargs, flags)
    except (ArchilError, click.ClickException, KeyboardInterrupt):
        raise
    except Exception as exc:
        # The remote function raised: its own exception, rebuilt here.
        message = str(exc).strip().splitlines()
        raise fail(
            f"{obj.name} raised {type(exc).__name__}" + (f": {message[0]}" if message else "")
        ) from exc
    finally:
        obj.app.close()
    _print_value(value, flags["json"])
    return 0
