"""Retries and timeouts of a function.

``retries=`` re-runs an attempt whose container failed or which raised, after a
backoff; each retry is logged (INFO on the ``archil`` logger) with its reason.
``timeout=`` limits each attempt and raises ``archil.FunctionTimeoutError``.
"""

import logging
import uuid

import archil

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

app = archil.App(name="retries", disk_id="disk_abc123", disk_env="production")


@app.function(
    retries=archil.Retries(max_retries=3, initial_delay=0.5, backoff_coefficient=2.0),
    stream_logs=False,
)
def flaky_download(run_id: str) -> str:
    import os

    # Count attempts on the disk: the first two fail, the third succeeds.
    path = f"/mnt/archil/retries-example/{run_id}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    attempt = 1
    if os.path.exists(path):
        with open(path) as f:
            attempt = int(f.read()) + 1
    with open(path, "w") as f:
        f.write(str(attempt))
    if attempt < 3:
        raise ConnectionError(f"the mirror hung up (attempt {attempt})")
    return f"downloaded on attempt {attempt}"


@app.function(timeout=2, stream_logs=False)
def too_slow() -> None:
    import time

    time.sleep(30)


if __name__ == "__main__":
    print(flaky_download.remote(uuid.uuid4().hex))
    try:
        too_slow.remote()
    except archil.FunctionTimeoutError as exc:
        print(f"timed out as expected: {exc.limit}={exc.seconds:g} s")
