"""`python -m workspace.cli`: the same as `cdw` (how SLURM jobs and subprocesses run a command)."""

from . import main

main()
