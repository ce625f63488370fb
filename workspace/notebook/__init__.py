"""What the notebooks (`notebooks/`) display, so that they hold no logic of their own and tests reach all of it.

`html.py`: pure renderers (data in, an HTML or markdown string out; no ipywidgets). `widgets.py`: the interactive
ipywidgets apps (policy explorer, sweep, finding form). `frontier.py`: the frontier chart with new points ringed.
`signals.py`: hand-made weak-token signals for checking a policy by hand.
"""
