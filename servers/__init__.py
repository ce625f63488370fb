"""Server side of the workspace: presets (data), model provisioning, and the vLLM launcher.

Nothing here talks to a running server except the launcher's health checks; the package `workspace`
reads the runtime file the launcher writes (`servers.runtime`) to find its endpoints.
"""
