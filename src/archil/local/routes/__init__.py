"""The local control plane's routes, one module per resource (mirroring ``archil._async.resources``)."""
