"""Running shell commands on a disk with @app.run."""

import archil

# Batch processing app lives on this disk
app = archil.App(name="batch-processing", disk_id="disk_abc123", disk_env="production")


@app.run(
    command="""
    mkdir -p /mnt/archil/batch && cd /mnt/archil/batch
    seq 1 1000 > numbers.txt
    tar -czf numbers.tar.gz numbers.txt
    echo "archived $(wc -l < numbers.txt) lines into $(pwd)/numbers.tar.gz"
    """,
    image=archil.Image.debian_slim().apt_install("tar", "gzip"),
    vcpu_count=1,
    mem_size_mib=256,
)
def batch_job():
    pass


if __name__ == "__main__":
    exit_code = batch_job.remote()
    print(f"batch job finished with exit code {exit_code}")
