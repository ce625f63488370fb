"""Server side of the workspace: settings, presets (data), model provisioning, and starting servers.

`settings` is the one reader of `CDW_*` variables. `control` starts, stops and reports a preset's servers, here
(`launcher`) or as SLURM jobs (`cluster`); `jobs` runs client commands as SLURM jobs. Nothing here talks to a
running server except the health checks of `startup`; the package `workspace` reads the runtime file
(`servers.runtime`) to find its endpoints.
"""
