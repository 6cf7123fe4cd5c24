"""Start calls in one process and collect their results in another.

``fn.spawn(...)`` returns an ``archil.FunctionCall`` as soon as the call has
started; its state and result live on the app's disk, so any process can pick
it up with ``archil.FunctionCall.from_id(object_id, app=app)``: a batch script
that died can still collect what it started.

    python examples/spawn_and_collect.py              # spawn, then collect in a second process
    python examples/spawn_and_collect.py collect ID…  # collect calls spawned earlier
"""

import subprocess
import sys

import archil

app = archil.App(name="spawn-and-collect", disk_id="disk_abc123", disk_env="production")


@app.function(stream_logs=False)
def train_fold(fold: int) -> dict:
    import time

    time.sleep(1)  # stands for real work
    return {"fold": fold, "score": round(0.8 + fold / 100, 2)}


def spawn() -> list:
    calls = [train_fold.spawn(fold) for fold in range(3)]
    ids = [call.object_id for call in calls]
    print(f"spawned {len(ids)} calls: {' '.join(ids)}")
    return ids


def collect(ids: list) -> None:
    for object_id in ids:
        call = archil.FunctionCall.from_id(object_id, app=app)
        print(f"collected {object_id}: {call.get(timeout=300)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["collect"]:
        collect(sys.argv[2:])
    else:
        ids = spawn()
        # This process is done with the calls; another one collects them.
        subprocess.run([sys.executable, __file__, "collect", *ids], check=True)
        print("all folds collected by another process")
