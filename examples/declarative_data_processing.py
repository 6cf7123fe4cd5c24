"""A data processing pipeline: write shards to the disk, process them in parallel with map()."""

import archil

app = archil.App(name="data-processing", disk_id="disk_abc123", disk_env="production")


@app.function()
def make_shards(n: int) -> list:
    import csv
    import os
    import random

    os.makedirs("/mnt/archil/pipeline/raw", exist_ok=True)
    paths = []
    for i in range(n):
        path = f"/mnt/archil/pipeline/raw/shard-{i:03d}.csv"
        rng = random.Random(i)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "value"])
            for j in range(1000):
                w.writerow([j, rng.randint(0, 100)])
        paths.append(path)
    return paths


@app.function(vcpu_count=1, mem_size_mib=256)
def summarize(path: str) -> dict:
    import csv

    with open(path, newline="") as f:
        values = [int(row["value"]) for row in csv.DictReader(f)]
    return {
        "shard": path.rsplit("/", 1)[-1],
        "rows": len(values),
        "mean": sum(values) / len(values),
    }


if __name__ == "__main__":
    shards = make_shards.remote(4)
    for summary in summarize.map(shards, concurrency=4):
        print(summary)
