"""The imperative API: create a container on a disk, follow its logs, clean up."""

import asyncio

import archil


async def main() -> None:
    async with archil.aio.Archil() as client:
        # All containers require a disk mount
        mount = archil.ArchilMount(disk_id="disk_abc123", env="production")

        container = await client.containers.create(
            archil_mount=mount,
            vcpu_count=1,
            mem_size_mib=256,
            command="echo hello from $(hostname) && ls -la /mnt/archil | head -5",
            metadata={"experiment_id": "exp_123"},
        )
        print(f"Created: {container.container_id}")

        async for entry in client.containers.logs(container.container_id, follow=True):
            if entry.stream in ("stdout", "stderr"):
                print(entry.data, end="")

        final = await client.containers.wait(container.container_id)
        print(f"Finished: status={final.status} exit_code={final.exit_code}")
        await client.containers.delete(container.container_id)


if __name__ == "__main__":
    asyncio.run(main())
