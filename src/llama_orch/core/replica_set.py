"""Replica sets pin one engine version and one sampler profile version (OC-CORE-1031, ORCH-3046).

Determinism holds only within a set, so replicas that differ in either version never share one.
The pool manager asks ``replica_set_conflict`` before it calls a pool Ready, and ``decide``
asks it again before it places anything on a pool.
"""

from __future__ import annotations

from collections.abc import Iterable

#: The version a replica reports before its engine has been asked; it never counts as a clash.
UNKNOWN_VERSION = "unknown"


def replica_set_conflict(
    pool_id: str, members: Iterable[tuple[str, str, str | None]]
) -> str | None:
    """None when the members agree; otherwise a sentence naming what differs.

    ``members`` holds ``(replica_id, engine_version, sampler_profile_version)``; an engine
    version that is still unknown is skipped (that replica is not Ready yet anyway).
    """
    engine_versions: dict[str, list[str]] = {}
    sampler_versions: dict[str | None, list[str]] = {}
    for replica_id, engine_version, sampler_version in members:
        if engine_version != UNKNOWN_VERSION:
            engine_versions.setdefault(engine_version, []).append(replica_id)
        sampler_versions.setdefault(sampler_version, []).append(replica_id)
    problems = []
    if len(engine_versions) > 1:
        problems.append("engine_version " + _describe(engine_versions))
    if len(sampler_versions) > 1:
        problems.append("sampler_profile_version " + _describe(sampler_versions))
    if not problems:
        return None
    return (
        f"pool {pool_id} mixes {' and '.join(problems)}; a replica set pins one of each, so "
        "the pool stays Unready until every replica runs the same versions"
    )


def _describe(groups: dict[str, list[str]] | dict[str | None, list[str]]) -> str:
    return (
        "("
        + "; ".join(
            f"{v}: {', '.join(ids)}"
            for v, ids in sorted(groups.items(), key=lambda item: str(item[0]))
        )
        + ")"
    )
