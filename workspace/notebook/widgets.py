"""The notebooks' interactive apps (ipywidgets): the policy explorer, the sweep with live progress, the finding
form. Each is a thin shell over the Python API and the renderers of `html.py`; ipywidgets is imported only where a
widget is built, so this module imports without the `notebooks` extra.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from ..engine import Decode, EngineSettings, Models, decode_many
from ..evaluate import Baselines, EvalSettings, Evaluation, Setup, sweep, sweep_points
from ..format import num
from ..forum import KINDS, FindingError, default_author, share_finding
from ..policies import PolicyError, load_policy, registry
from ..policies.params import param_specs, spec_string
from ..records.log import StoreError, read_record
from .html import ERROR_COLOR, decodes_table, error_box, escape, evaluations_html


class PolicyExplorer:
    """Pick a policy family, move its parameters, and see a few instructions re-decoded live.

    Each change schedules a decode of every instruction as an asyncio task on the kernel's loop and cancels the
    run still in flight, so only the latest setting reaches the table. `await explorer.refresh()` runs it now
    (top-level await in a notebook); `explorer.set(tau=0.2)` moves controls from code.
    """

    def __init__(
        self,
        instructions: Sequence[str],
        models: Models,
        settings: EngineSettings | None = None,
        family: str = "margin",
        debounce: float = 0.3,
    ):
        import ipywidgets as w

        self.instructions = list(instructions)
        self.models = models
        self.settings = settings or EngineSettings(max_tokens=96)
        self.debounce = debounce  # a slider being dragged moves again within this: the run is dropped unsent
        self.runs: list[tuple[str, str]] = []  # (spec, "done" | "cancelled" | "error"), oldest first
        self.decodes: list[Decode] = []
        self._task: asyncio.Task | None = None
        self._w = w
        self.family = w.Dropdown(options=list(registry.families()), value=family, description="policy")
        self.controls: dict[str, w.ValueWidget] = {}
        self.box = w.VBox()
        self.spec_label = w.HTML()
        self.status = w.HTML()
        self.table = w.HTML()
        self.widget = w.VBox([self.family, self.box, self.spec_label, self.status, self.table])
        self.family.observe(self._family_changed, names="value")
        self._build_controls()

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    def _build_controls(self) -> None:
        w = self._w
        self.params = param_specs(self.family.value)
        self.controls = {}
        for p in self.params:
            style = {"description_width": "initial"}
            if p.kind == "float":
                c = w.FloatSlider(value=p.default, min=p.min, max=p.max, step=p.step, description=p.name, style=style)
            elif p.kind == "int":
                c = w.IntSlider(value=p.default, min=p.min, max=p.max, step=p.step, description=p.name, style=style)
            elif p.kind == "choice":
                options = list(dict.fromkeys([str(p.default), *p.options]))
                c = w.Dropdown(options=options, value=str(p.default), description=p.name, style=style)
            else:
                c = w.Text(value=str(p.default), description=f"{p.name} policy", continuous_update=False, style=style)
            c.observe(self._control_changed, names="value")
            self.controls[p.name] = c
        self.box.children = tuple(self.controls.values())
        self._show_spec()

    def _show_spec(self) -> None:
        self.spec_label.value = f"spec: <code>{escape(self.spec)}</code>"

    @property
    def spec(self) -> str:
        """The policy spec the controls describe now."""
        return spec_string(self.family.value, {k: c.value for k, c in self.controls.items()}, self.params)

    def set(self, **values) -> asyncio.Task | None:
        """Move controls from code (as a person would with the mouse); returns the run it scheduled."""
        for k, v in values.items():
            if k not in self.controls:
                raise KeyError(f"{self.family.value} has no parameter {k!r}; it has {', '.join(self.controls)}")
            self.controls[k].value = v
        return self._task

    def _family_changed(self, change) -> None:
        self._build_controls()
        self.schedule()

    def _control_changed(self, change) -> None:
        self._show_spec()
        self.schedule()

    def schedule(self) -> asyncio.Task:
        """Start decoding with the current spec, cancelling the run still in flight."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        spec = self.spec
        task = asyncio.get_running_loop().create_task(self._run(spec))
        # A run cancelled before it started never enters `_run`, so its fate is recorded here.
        task.add_done_callback(lambda t: self.runs.append((spec, "cancelled")) if t.cancelled() else None)
        self._task = task
        return task

    async def refresh(self) -> list[Decode]:
        """Decode with the current controls and wait for it (the notebook's first view)."""
        self.schedule()
        return await self.wait()

    async def wait(self) -> list[Decode]:
        """Wait until the newest run has finished (a run replaced while waiting is followed to its successor)."""
        while True:
            task = self._task
            if task is None:
                return self.decodes
            await asyncio.wait({task})
            if task is self._task:
                return [] if task.cancelled() else task.result()

    async def _run(self, spec: str) -> list[Decode]:
        try:
            await asyncio.sleep(self.debounce)
            try:
                policy = load_policy(spec)
            except PolicyError as e:
                self.status.value = error_box(str(e))
                self.runs.append((spec, "error"))
                return []
            self.status.value = f"decoding {len(self.instructions)} instruction(s) with <code>{escape(spec)}</code> …"
            t0 = time.monotonic()
            decodes = await decode_many(self.instructions, policy, self.models, self.settings, progress=False)
        except asyncio.CancelledError:
            self.status.value = f"<code>{escape(spec)}</code>: replaced by a newer setting"
            raise
        self.decodes = decodes
        self.table.value = decodes_table(decodes)
        failed = sum(1 for d in decodes if d.error)
        tail = f" · <span style='color:{ERROR_COLOR}'>{failed} failed (see the table)</span>" if failed else ""
        self.status.value = f"<code>{escape(spec)}</code>: done in {time.monotonic() - t0:.1f} s{tail}"
        self.runs.append((spec, "done"))
        return decodes


# ---------------------------------------------------------------- sweeps


class Sweep:
    """Evaluate every point of a spec grid concurrently (`margin(tau=[0.05, 0.1])`), with a live progress widget.

    The sweep itself is `workspace.evaluate.sweep` (baselines once first, then the points at once; one after
    another while some baseline examples failed). The bar counts each point's decoded and judged prompts as its
    record grows. A point that fails (a bad spec, a server error) shows its error and never stops the others.
    Display the object, then `await sweep.run()`.
    """

    def __init__(
        self,
        spec: str | Sequence[str],
        prompts,
        setup: Setup,
        settings: EvalSettings | None = None,
        poll: float = 0.5,
    ):
        import ipywidgets as w

        self.points = sweep_points(spec, strict=False)
        self.prompts, self.setup, self.settings, self.poll = prompts, setup, settings or EvalSettings(), poll
        n = len(prompts)
        self.bar = w.IntProgress(value=0, min=0, max=max(1, 2 * n * len(self.points)), description="sweep",
                                 bar_style="info")  # fmt: skip
        self.label = w.HTML(f"{len(self.points)} point(s) × {n} prompt(s): waiting for <code>await sweep.run()</code>")
        self.table = w.HTML()
        self.widget = w.VBox([w.HBox([self.bar, self.label]), self.table])
        self._progress: dict[str, str] = {}
        self._poller: asyncio.Task | None = None  # redraws the bar while the points run

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    @property
    def evaluations(self) -> list[Evaluation]:
        return [p.evaluation for p in self.points if p.evaluation is not None]

    @property
    def new_ids(self) -> list[str]:
        return [p.evaluation.id for p in self.points if p.evaluation is not None]

    def _count(self) -> int:
        """Decoded + judged prompts over every point, read from the records as they grow."""
        done = 0
        for p in self.points:
            if p.id is None:
                continue
            if p.evaluation is not None:
                done += 2 * p.evaluation.n
                self._progress[p.spec] = "done"
                continue
            try:
                rec = read_record("evaluations", p.id)
            except StoreError:
                rec = None
            events = rec.events if rec else ()
            gens = {e["prompt_id"] for e in events if e.get("type") == "generation"}
            prefs = {e["prompt_id"] for e in events if e.get("type") == "preference"}
            done += len(gens) + len(prefs)
            self._progress[p.spec] = f"decoded {len(gens)}, judged {len(prefs)} of {len(self.prompts)}"
        return done

    def _show(self) -> None:
        self.bar.value = min(self.bar.max, self._count())
        running = [p for p in self.points if p.evaluation is None and p.error is None]
        rows = "".join(f"<li><code>{escape(p.spec)}</code>: {escape(self._progress.get(p.spec, 'waiting'))}</li>"
                       for p in running)  # fmt: skip
        done = [p.evaluation for p in self.points if p.evaluation is not None]
        failed = [(p.spec, p.error) for p in self.points if p.error is not None]
        self.table.value = (f"<ul>{rows}</ul>" if rows else "") + (
            evaluations_html(done, failed) if done or failed else ""
        )

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            self._show()

    def _baselines_ready(self, base: Baselines) -> None:
        note = ""
        if base.errors:  # the points still run: their own rows say which examples have no numbers
            first = escape(base.errors[0][1])
            note = f" · <span style='color:{ERROR_COLOR}'>{len(base.errors)} baseline error(s): {first}</span>"
        self.label.value = f"baselines ready (U_weak {num(base.u_weak)}){note} · {len(self.points)} point(s) running …"
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def run(self) -> list[Evaluation]:
        """Run the sweep (points already on record are read back, not recomputed); returns the evaluations."""
        t0 = time.monotonic()
        self.bar.bar_style = "info"
        self.label.value = "baselines (reference and weak-only answers, judged once for every point) …"
        try:
            await sweep(self.points, self.prompts, self.setup, self.settings, progress=False, concurrent=True,
                        strict=False, on_baselines=self._baselines_ready, on_point=lambda p: self._show())  # fmt: skip
        except Exception as e:  # only the baselines' failure reaches here: a point's stays on its row
            self.bar.bar_style = "danger"
            self.label.value = error_box(f"baselines failed: {type(e).__name__}: {e}")
            return []
        finally:
            if self._poller is not None:
                self._poller.cancel()
        self._show()
        failed = sum(1 for p in self.points if p.error or (p.evaluation and p.evaluation.errors))
        self.bar.value = self.bar.max
        self.bar.bar_style = "warning" if failed else "success"
        self.label.value = (
            f"{len(self.evaluations)} of {len(self.points)} point(s) evaluated in {time.monotonic() - t0:.1f} s"
            + (f" · <span style='color:{ERROR_COLOR}'>{failed} with errors (see the table)</span>" if failed else "")
        )
        return self.evaluations


# ---------------------------------------------------------------- the forum


class FindingForm:
    """A small form that posts a finding to `findings/` through `share_finding` (the same rules as the CLI)."""

    def __init__(self, author: str | None = None):
        import ipywidgets as w

        wide = w.Layout(width="46em")
        self.title = w.Text(description="title", layout=wide)
        self.kind = w.Dropdown(options=list(KINDS), value="hypothesis", description="kind")
        self.author = w.Text(value=author or default_author(), description="author")
        self.policy = w.Text(description="policy", placeholder="margin(tau=0.1) (optional)", layout=wide)
        self.evaluation = w.Text(description="evaluation", placeholder="record id (a result needs one)", layout=wide)
        self.tags = w.Text(description="tags", placeholder="comma-separated (optional)", layout=wide)
        self.body = w.Textarea(description="body", placeholder="what was tried, how, and what it means (markdown)",
                               layout=w.Layout(width="46em", height="8em"))  # fmt: skip
        self.button = w.Button(description="Post finding", button_style="primary")
        self.message = w.HTML()
        self.posted: list[str] = []
        self.button.on_click(lambda _: self.post())
        self.widget = w.VBox([self.title, self.kind, self.author, self.policy, self.evaluation, self.tags, self.body,
                              self.button, self.message])  # fmt: skip

    def _repr_mimebundle_(self, **kw):
        return self.widget._repr_mimebundle_(**kw)

    def post(self) -> str | None:
        """Post what the form holds; returns the new finding's id, or None with the reason shown in the form."""
        try:
            fid = share_finding(
                self.title.value, self.kind.value, self.body.value, self.author.value,
                policy=self.policy.value.strip() or None, evaluation=self.evaluation.value.strip() or None,
                tags=[t.strip() for t in self.tags.value.split(",") if t.strip()],
            )  # fmt: skip
        except FindingError as e:
            self.message.value = error_box(str(e))
            return None
        self.posted.append(fid)
        self.message.value = f"posted <code>{escape(fid)}</code> — re-run the feed cell to see it"
        self.title.value = self.body.value = ""
        return fid


def finding_form(author: str | None = None) -> FindingForm:
    """The form to post a finding (display it in a notebook)."""
    return FindingForm(author)
