"""A class with warm state: load a model from the disk once, then serve predictions.

``@archil.enter()`` runs once per container; successive
``Model().predict.remote(x)`` calls reuse the warm sandbox until it has been
idle for ``scaledown_window`` seconds. It is deleted then, at the end of the
script, or on Ctrl-C.
"""

import json
import time

import archil

app = archil.App(name="warm-model", disk_id="disk_abc123", disk_env="production")


@app.function(stream_logs=False)
def save_model() -> None:
    import json
    import os

    os.makedirs("/mnt/archil/models", exist_ok=True)
    with open("/mnt/archil/models/linear.json", "w") as f:
        json.dump({"w": 3.0, "b": 0.5}, f)


@app.cls(scaledown_window=30, stream_logs=False)
class Model:
    @archil.enter()
    def load(self) -> None:
        import time

        with open("/mnt/archil/models/linear.json") as f:
            self.params = json.load(f)
        time.sleep(0.5)  # stands for an expensive model load
        self.loaded_at = time.time()

    @archil.method()
    def predict(self, x: float) -> dict:
        return {"y": self.params["w"] * x + self.params["b"], "loaded_at": self.loaded_at}


if __name__ == "__main__":
    save_model.remote()
    t0 = time.perf_counter()
    results = [Model().predict.remote(x) for x in range(5)]
    elapsed = time.perf_counter() - t0
    print("predictions:", [r["y"] for r in results])
    print(f"model loaded once: {len({r['loaded_at'] for r in results}) == 1}")
    print(f"5 calls in {elapsed:.2f} s")
