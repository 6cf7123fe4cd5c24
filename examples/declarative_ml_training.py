"""An ML training workflow: train on a disk, checkpoint to it, evaluate from it.

The model is a small linear regression fitted by gradient descent in plain
Python, so the example runs anywhere; swap in torch with
``archil.Image.python("3.11").pip_install("torch")`` for real work.
"""

import archil

# Training app lives on your ML disk
app = archil.App(
    name="ml-training",
    disk_id="disk_ml_workspace",  # Your models, checkpoints, logs live here
    disk_env="production",
)

training_image = archil.Image.python().env(PYTHONUNBUFFERED="1", EPOCHS="200")


@app.function(image=training_image, vcpu_count=2, mem_size_mib=1024)
def train(seed: int = 0) -> dict:
    import json
    import os
    import random

    rng = random.Random(seed)
    # A synthetic data set, y = 3x - 2 + noise, saved to the disk like real data would be.
    os.makedirs("/mnt/archil/datasets", exist_ok=True)
    data = [(x, 3 * x - 2 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(256))]
    with open("/mnt/archil/datasets/linear.json", "w") as f:
        json.dump(data, f)

    w, b, lr = 0.0, 0.0, 0.1
    epochs = int(os.environ["EPOCHS"])
    for epoch in range(epochs):
        gw = sum(2 * (w * x + b - y) * x for x, y in data) / len(data)
        gb = sum(2 * (w * x + b - y) for x, y in data) / len(data)
        w, b = w - lr * gw, b - lr * gb
        if epoch % 50 == 0:
            loss = sum((w * x + b - y) ** 2 for x, y in data) / len(data)
            print(f"epoch {epoch:4d}  loss {loss:.5f}")

    os.makedirs("/mnt/archil/models", exist_ok=True)
    with open("/mnt/archil/models/linear.json", "w") as f:
        json.dump({"w": w, "b": b}, f)
    print("Model saved to /mnt/archil/models/linear.json")
    return {"w": round(w, 3), "b": round(b, 3)}


@app.function(image=training_image)
def evaluate(xs: list) -> list:
    import json

    with open("/mnt/archil/models/linear.json") as f:
        model = json.load(f)
    return [round(model["w"] * x + model["b"], 3) for x in xs]


if __name__ == "__main__":
    print("trained:", train.remote(seed=42))
    print("predictions:", evaluate.remote([0.0, 0.5, 1.0]))
