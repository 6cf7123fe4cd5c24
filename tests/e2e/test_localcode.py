"""Local code and files in the image: add_local_python_source, add_local_dir, add_local_file."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

import archil


def test_local_package_dir_and_file_reach_the_function(
    conn: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "src" / "mylocallib"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .maths import double\n")
    (pkg / "maths.py").write_text("def double(x):\n    return 2 * x\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "junk.pyc").write_bytes(b"junk")
    data = tmp_path / "data"
    (data / "nested").mkdir(parents=True)
    (data / "nested" / "rows.csv").write_text("a,b\n1,2\n")
    config = tmp_path / "config.toml"
    config.write_text("mode = 'first'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))

    app = archil.App(name="localcode", disk_id=f"disk_{uuid.uuid4().hex[:10]}", **conn)

    def declare() -> archil.Function[[int], tuple[int, str, str, bool]]:
        image = (
            archil.Image.debian_slim()
            .add_local_python_source("mylocallib")
            .add_local_dir(data, "/srv/data")
            .add_local_file(config, "/etc/myapp/config.toml")
        )

        @app.function(image=image, stream_logs=False)
        def use(x: int) -> tuple[int, str, str, bool]:
            import mylocallib  # only in the image

            with open("/srv/data/nested/rows.csv") as f:
                rows = f.read()
            with open("/etc/myapp/config.toml") as f:
                mode = f.read()
            return mylocallib.double(x), rows, mode, archil.is_local()

        return use

    use = declare()
    assert use.remote(21) == (42, "a,b\n1,2\n", "mode = 'first'\n", False)
    assert asyncio.run(use.remote.aio(4))[0] == 8
    assert archil.is_local() is True
    first = use.options.prepared_name()
    assert declare().options.prepared_name() == first  # unchanged content: reused
    config.write_text("mode = 'second'\n")
    changed = declare()
    assert changed.options.prepared_name() != first  # changed content: prepared again
    assert changed.remote(1)[2] == "mode = 'second'\n"
    sandboxes = app.client().sandboxes.list(disk_id=app.disk_id)
    names = {s.name.rsplit("-", 1)[0] for s in sandboxes if s.name.startswith("archil-img-")}
    assert names == {first, changed.options.prepared_name()}
