"""Where each role's server is: a flag, an environment variable, or what `cdw serve` started.

Precedence, per role: an explicit URL (a `--weak-url` flag or argument) > `CDW_WEAK_URL` / `CDW_STRONG_URL` /
`CDW_JUDGE_URL` > the runtime file of `cdw serve` (its active preset). A URL may list several replicas
separated by commas; the client spreads requests over them. `CDW_<ROLE>_MODEL` names the served model when
a server hosts several; otherwise the client asks the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from servers.presets import ROLES
from servers.runtime import read_state
from servers.settings import server_model, server_url, url_variable


class EndpointError(RuntimeError):
    """No server is known for a role."""


@dataclass(frozen=True)
class Endpoint:
    role: str
    urls: tuple[str, ...]  # base URLs without the /v1 suffix
    model: str | None = None  # served model name; None: ask the server
    origin: str = ""  # where the URL came from, for `cdw status`
    note: str = ""  # e.g. "plumbing only" when the strong server also answers the judge role
    max_in_flight: int | None = None  # the preset's cap on concurrent requests (small CPU servers thrash above it)
    request_timeout: float | None = None  # the preset's time limit for one request (slow CPU servers need more)
    engine: dict[str, str] = field(default_factory=dict)  # how the server decodes, as `cdw serve` started it
    # Fixed chat-template arguments (None: the presets catalog's for the served model, `Catalog.template_kwargs`).
    chat_template_kwargs: dict | None = None


def _split(urls: str) -> tuple[str, ...]:
    out = []
    for u in urls.split(","):
        u = u.strip().rstrip("/")
        if not u:
            continue
        if u.endswith("/v1"):
            u = u[: -len("/v1")]
        if "://" not in u:
            u = "http://" + u
        out.append(u)
    return tuple(out)


def resolve_endpoint(role: str, url: str | None = None, preset: str | None = None) -> Endpoint:
    """Find the server(s) answering `role`; raises EndpointError with what to do if there is none."""
    if role not in ROLES:
        raise EndpointError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    model = server_model(role)
    if url:
        return Endpoint(role, _split(url), model, origin="argument")
    env = url_variable(role)
    if server_url(role):
        return Endpoint(role, _split(server_url(role)), model, origin=f"${env}")
    state = read_state()
    recs = state.for_role(role, preset)
    if not recs:
        raise EndpointError(
            f"no {role} server: start one with `cdw serve` (embedded CPU default) or `cdw serve --preset P`, "
            f"or point at any OpenAI-compatible server with --{role}-url / ${env}"
        )
    return Endpoint(
        role,
        tuple(r.url for r in recs),
        model or recs[0].model,
        origin=f"cdw serve (preset {recs[0].preset})",
        note=recs[0].notes.get(role, ""),
        max_in_flight=recs[0].max_in_flight,
        request_timeout=recs[0].request_timeout,
        engine=recs[0].engine,
    )


def resolve_endpoints(
    urls: dict[str, str | None] | None = None, roles: tuple[str, ...] = ROLES, preset: str | None = None
) -> dict[str, Endpoint]:
    """Resolve several roles at once; `urls` maps role -> explicit URL (or None)."""
    urls = urls or {}
    return {r: resolve_endpoint(r, urls.get(r), preset) for r in roles}
