"""`python -m pipeline.cli ...`: the `fersynth` command without the installed entry point.

Scripts that run a command in a child process (benchmarks/gpu_run.py) call it with their own
interpreter, so the child imports the same checkout and environment as the parent.
"""

from pipeline.cli import app

app(prog_name="fersynth")
