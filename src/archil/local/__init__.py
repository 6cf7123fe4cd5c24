"""The embedded local control plane: an HTTP server that implements the Archil contract on this machine.

``archil.local.embedded.LocalServer`` runs it in a background thread;
``archil local serve`` runs it in the foreground.
"""
