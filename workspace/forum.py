"""The research forum: findings as markdown files with YAML front matter in `findings/` (ARCHITECTURE.md “Records and
findings”).

A finding is `findings/<UTC timestamp>-<slug>.md`. Its front matter says what it is (`title`, `kind`, `author`,
`created`, `policy`, `evaluation`, `tags`); its body is self-contained markdown. Writers never overwrite each
other: a file is created exclusively and a name clash gets a suffix. Readers skip (and warn about) any file they
cannot read, so one bad file never hides the rest of the feed. A `result` must name an evaluation on record, and
its numbers are always read from that record (`load_evaluation`), never from the finding's text or front matter.
"""

from __future__ import annotations

import os
import re
import unicodedata
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import frontmatter

from servers.settings import author, paths

from .evaluate import EvaluationError, load_evaluation
from .policies import PolicyError, family, load_policy

KINDS = ("hypothesis", "negative", "result", "insight")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class FindingError(ValueError):
    """A finding cannot be written or read as asked (bad kind, missing evaluation, malformed file)."""


class FindingWarning(UserWarning):
    """A file in `findings/` was skipped because it is not a readable finding."""


@dataclass(frozen=True)
class Finding:
    """One finding as read from disk. Numbers of a result live in its evaluation record, not here."""

    id: str  # the file name without `.md`
    title: str
    kind: str
    author: str
    created: datetime  # UTC
    body: str
    policy: str | None = None
    evaluation: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def agent_run(self) -> str | None:
        """The `cdw agents run` this finding came from (authors `agent-<run>-<i>`), else None."""
        m = AGENT_AUTHOR.fullmatch(self.author)
        return m.group(1) if m else None

    def to_json(self) -> dict:
        return {
            "id": self.id, "title": self.title, "kind": self.kind, "author": self.author,
            "created": self.created.isoformat(), "policy": self.policy, "evaluation": self.evaluation,
            "tags": list(self.tags), "body": self.body, "agent_run": self.agent_run,
        }  # fmt: skip


AGENT_AUTHOR = re.compile(r"agent-(\d{8}T\d{6}-[0-9a-f]{4})-\d+")  # the names `cdw agents run` gives its agents


def findings_dir() -> Path:
    """The findings folder (`CDW_FINDINGS_DIR`, default `findings/` in the project)."""
    return paths().findings


def default_author() -> str:
    """Who is posting: `CDW_AUTHOR`, else the login name."""
    return author()


def slugify(title: str, limit: int = 60) -> str:
    """A file-name-safe slug of a title (ASCII letters, digits and hyphens)."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:limit].rstrip("-")
    return slug or "finding"


# ---------------------------------------------------------------- writing


def _same_policy(spec: str, described: str) -> bool:
    try:
        return load_policy(spec).describe() == described
    except PolicyError:
        return False


def _check_evaluation(evaluation: str, policy: str | None) -> str:
    """The policy of an evaluation on record; refuses a missing record or a policy that contradicts it."""
    try:
        ev = load_evaluation(evaluation)
    except EvaluationError as e:
        raise FindingError(f"the finding names evaluation {evaluation!r}, which cannot be read: {e}") from e
    if policy is not None and policy.strip() != ev.policy and not _same_policy(policy, ev.policy):
        raise FindingError(f"policy {policy!r} is not the policy of evaluation {evaluation} ({ev.policy!r})")
    return ev.policy


def _write_synced(fd: int, text: str) -> None:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _claim(path: Path, tmp: Path, text: str) -> bool:
    """Put the finding at `path` unless that name is taken; never replaces a file."""
    try:
        os.link(tmp, path)  # atomic and exclusive: readers never see a half-written finding
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: create-exclusive (O_EXCL) directly
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        _write_synced(fd, text)
        return True


def _create_exclusive(folder: Path, stem: str, text: str) -> str:
    """Write `text` to `<folder>/<stem>[-k].md` without ever replacing a file; returns the stem used."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{stem}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    _write_synced(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), text)
    try:
        for k in range(1, 10_000):
            name = stem if k == 1 else f"{stem}-{k}"
            if _claim(folder / f"{name}.md", tmp, text):
                return name
        raise FindingError(f"too many findings named {stem}")
    finally:
        tmp.unlink(missing_ok=True)


def share_finding(
    title: str,
    kind: str,
    body: str,
    author: str,
    policy: str | None = None,
    evaluation: str | None = None,
    tags: tuple[str, ...] | list[str] = (),
) -> str:
    """Post a finding to `findings/` and return its id. A `result` must name an evaluation on record."""
    title = " ".join(title.split())
    if not title:
        raise FindingError("a finding needs a title")
    if kind not in KINDS:
        raise FindingError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if not body.strip():
        raise FindingError("a finding needs a body: what was tried, how, what it means")
    if not author.strip():
        raise FindingError("a finding needs an author")
    if kind == "result" and not evaluation:
        raise FindingError("a result must name the evaluation it reports (its numbers are read from the record)")
    if evaluation:
        policy = _check_evaluation(evaluation, policy)
    created = datetime.now(UTC)
    meta = {
        "title": title, "kind": kind, "author": author.strip(),
        "created": created.isoformat(timespec="milliseconds"), "policy": policy, "evaluation": evaluation,
        "tags": [str(t).strip() for t in tags if str(t).strip()],
    }  # fmt: skip
    text = frontmatter.dumps(frontmatter.Post(body.strip() + "\n", **meta), sort_keys=False) + "\n"
    return _create_exclusive(findings_dir(), f"{created:%Y%m%dT%H%M%SZ}-{slugify(title)}", text)


# ---------------------------------------------------------------- reading


def _created(value: object) -> datetime:
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as e:
            raise FindingError(f"created is not an ISO date: {value!r}") from e
    else:
        raise FindingError(f"created is missing or not a date: {value!r}")
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _text(meta: dict, key: str, required: bool = True) -> str | None:
    v = meta.get(key)
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise FindingError(f"front matter has no {key}")
        return None
    if not isinstance(v, str | int | float):
        raise FindingError(f"{key} must be text, not {type(v).__name__}")
    return str(v).strip()


def read_finding(path: Path) -> Finding:
    """Parse one finding file; raises FindingError when it is malformed."""
    try:
        post = frontmatter.loads(path.read_text(encoding="utf-8"))
    except Exception as e:  # user-written text: any parse failure is "malformed", never a crash
        raise FindingError(f"cannot parse ({type(e).__name__}: {e})") from e
    meta = post.metadata
    if not meta:
        raise FindingError("no YAML front matter (--- title: … kind: … ---)")
    kind = _text(meta, "kind")
    if kind not in KINDS:
        raise FindingError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    tags = meta.get("tags") or []
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",")]
    if not isinstance(tags, list) or not all(isinstance(t, str | int | float) for t in tags):
        raise FindingError("tags must be a list of words")
    evaluation = _text(meta, "evaluation", required=False)
    if kind == "result" and not evaluation:
        raise FindingError("a result must name its evaluation")
    return Finding(
        id=path.stem, title=_text(meta, "title"), kind=kind, author=_text(meta, "author"),
        created=_created(meta.get("created")), body=post.content, policy=_text(meta, "policy", required=False),
        evaluation=evaluation, tags=tuple(str(t) for t in tags if str(t).strip()),
    )  # fmt: skip


def scan_findings() -> tuple[list[Finding], list[tuple[str, str]]]:
    """Every readable finding (newest first) and, for each file skipped, (file name, why)."""
    folder = findings_dir()
    out, skipped = [], []
    files = sorted(folder.glob("*.md")) if folder.is_dir() else []
    for p in files:
        if p.name.lower() == "readme.md" or p.name.startswith((".", "_")):
            continue
        try:
            out.append(read_finding(p))
        except (FindingError, OSError) as e:
            skipped.append((p.name, str(e)))
    out.sort(key=lambda f: (f.created, f.id), reverse=True)
    return out, skipped


def _policy_matches(finding: Finding, policy: str) -> bool:
    """An exact policy spec, or a family name (`margin` matches `margin(tau=0.1, span=sentence)`)."""
    mine = finding.policy or ""
    return mine == policy or family(mine) == policy


def get_findings(
    kind: str | None = None,
    policy: str | None = None,
    since: datetime | date | str | None = None,
    text: str | None = None,
) -> list[Finding]:
    """Findings newest first, filtered by kind, policy (spec or family), creation time and free text.

    Each malformed file is skipped with a `FindingWarning` that names it.
    """
    if kind is not None and kind not in KINDS:
        raise FindingError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    found, skipped = scan_findings()
    for name, why in skipped:
        warnings.warn(f"skipped malformed finding {name}: {why}", FindingWarning, stacklevel=2)
    cutoff = _created(since) if since is not None else None
    needle = text.lower() if text else None
    return [
        f for f in found
        if (kind is None or f.kind == kind)
        and (policy is None or _policy_matches(f, policy))
        and (cutoff is None or f.created >= cutoff)
        and (needle is None or needle in f"{f.title}\n{f.body}\n{' '.join(f.tags)}".lower())
    ]  # fmt: skip


def get_finding(finding_id: str) -> Finding:
    """One finding by id (its file name without `.md`)."""
    finding_id = finding_id.removesuffix(".md")
    if not _ID.match(finding_id):
        raise FindingError(f"not a finding id: {finding_id!r}")
    path = findings_dir() / f"{finding_id}.md"
    if not path.is_file():
        raise FindingError(f"no finding {finding_id!r} in {findings_dir()}")
    try:
        return read_finding(path)
    except FindingError as e:
        raise FindingError(f"{path.name} is malformed: {e}") from e
