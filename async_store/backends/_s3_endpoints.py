"""One endpoint resolution per bucket, not one per object key.

botocore resolves S3's endpoint rule set before every request, behind a cache keyed by the
rule set's parameters; the object's ``Key`` is one of them, so every new key misses the cache
and the whole rule set is evaluated again: 28 % of the client CPU of a 4 KiB ``PutObject``
here (py-spy, 1,000 saves at concurrency 32 to SeaweedFS). No rule of the set reads ``Key``
(it is declared for operations scoped to a key, and never referenced), so the result cannot
depend on it: the key is left out of what the cache sees. Checked against the rule set
botocore loads; where a rule ever does read ``Key``, nothing changes.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["resolve_once_per_bucket"]


@functools.cache
def _key_is_unused() -> bool:
    """Whether S3's rule set declares ``Key`` and no rule reads it (checked once a process)."""
    from botocore.loaders import create_loader

    ruleset = create_loader().load_service_model("s3", "endpoint-rule-set-1")
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "ref" in node:
                refs.append(str(node["ref"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(ruleset.get("rules", []))
    return "Key" in ruleset.get("parameters", {}) and "Key" not in refs


def resolve_once_per_bucket(client: Any) -> None:
    """Have ``client`` (an aiobotocore S3 client) resolve its endpoint without the object key
    among the cached parameters, when its rule set never reads the key; else leave it be."""
    provider = getattr(getattr(client, "_ruleset_resolver", None), "_provider", None)
    resolve = getattr(provider, "resolve_endpoint", None)
    if resolve is None or not _key_is_unused():
        return

    def without_key(**params: Any) -> Any:
        params.pop("Key", None)
        return resolve(**params)

    provider.resolve_endpoint = without_key  # type: ignore[union-attr]
