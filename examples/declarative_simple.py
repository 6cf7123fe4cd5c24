"""Hello world: a function that runs in a container on your disk.

With no ARCHIL_API_KEY set, this runs on the embedded local control plane:
the disk is a directory on this machine and the container a local process.
"""

import archil

# App lives on a disk
app = archil.App(
    name="hello",
    disk_id="disk_abc123",
    disk_env="production",
)


@app.function()
def say_hello(name: str = "Archil") -> str:
    import os
    import platform

    print(f"Hello from {name}!")
    print("My disk is at /mnt/archil")
    # Anything written under /mnt/archil lands on the disk and outlives the container.
    os.makedirs("/mnt/archil/hello", exist_ok=True)
    with open("/mnt/archil/hello/greeting.txt", "w") as f:
        f.write(f"Hello from {name} on Python {platform.python_version()}\n")
    return f"greeted {name}"


if __name__ == "__main__":
    result = say_hello.remote()
    print(f"remote() returned: {result!r}")
