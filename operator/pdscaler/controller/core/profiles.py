"""Which performance profile each role runs, from the ProfileSet documents the shell read.

Pure: the shell reads ConfigMaps (I/O); this module parses and checks the documents with the
planner's one validator (:func:`planner.importers.parse_profile_instances`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pdscaler.controller.api import PDDeploymentSpec
from pdscaler.controller.core.memo import Memo
from planner import InstanceProfile, ProfileFormatError, ProfileSet
from planner.common import ROLES, Role
from planner.importers import complete_profile_set, parse_profile_instances
from planner.profile import ProfileMetadata


class ProfileError(ValueError):
    """The performance profile is missing or invalid."""


@dataclass(frozen=True)
class ProfileDocument:
    """One role's profile source as read: the document (text or mapping), or why it is missing."""

    where: str
    """Where it came from, for messages (``spec.profile``, ``ConfigMap x key y``)."""
    content: str | Mapping[str, Any] | None = None
    problem: str | None = None

    @cached_property
    def digest(self) -> str:
        """A content hash (computed once per document object; the shell shares one document
        between the roles when they use the same source)."""
        raw = (self.content if isinstance(self.content, str)
               else json.dumps(self.content, sort_keys=True, default=str))
        return hashlib.sha1(raw.encode()).hexdigest()


@dataclass(frozen=True)
class ChosenProfiles:
    """The set planned with, the configuration each role runs, and a cache key."""

    profile_set: ProfileSet
    chosen: Mapping[Role, InstanceProfile]
    key: str


def choose_profiles(
    spec: PDDeploymentSpec, documents: Mapping[Role, ProfileDocument], memo: Memo
) -> ChosenProfiles:
    """Parse each role's document and pick the configuration the role's target runs.

    Raises :class:`ProfileError` naming the source and the problem: document missing or
    invalid, no instance of the role, several configurations and no ``profileConfig``, an
    unknown ``profileConfig``, ``gpusPerReplica`` different from the configuration's GPUs.
    """
    chosen: dict[Role, InstanceProfile] = {}
    key_parts: list[str] = []
    for role in ROLES:
        document = documents[role]
        if document.problem is not None or document.content is None:
            raise ProfileError(document.problem or f"{document.where}: empty")
        where, digest = document.where, document.digest
        instances = memo.profiles.get_or_compute(
            (role, digest), lambda d=document, r=role: _role_instances(d, r)  # type: ignore[misc]
        )
        assert isinstance(instances, tuple)
        role_spec = spec.role(role)
        wanted = role_spec.profile_config
        if wanted is None:
            if len(instances) > 1:
                raise ProfileError(
                    f"{where} has {len(instances)} {role} configurations "
                    f"({', '.join(i.name for i in instances)}); set spec.{role}.profileConfig"
                )
            instance = instances[0]
        else:
            match = [i for i in instances if i.name == wanted]
            if not match:
                raise ProfileError(
                    f"spec.{role}.profileConfig={wanted!r} is not in {where} "
                    f"(has {', '.join(i.name for i in instances)})"
                )
            instance = match[0]
        if instance.gpus_per_instance != role_spec.gpus_per_replica:
            raise ProfileError(
                f"spec.{role}.gpusPerReplica={role_spec.gpus_per_replica} but profile "
                f"configuration {instance.name!r} uses {instance.gpus_per_instance} GPUs"
            )
        chosen[role] = instance
        key_parts.append(f"{digest}:{instance.name}")
    key = "|".join(key_parts)

    def build() -> ProfileSet:
        try:
            return complete_profile_set(
                ProfileMetadata(),
                (chosen["prefill"], chosen["decode"]), "profile",
            )
        except ProfileFormatError as exc:
            raise ProfileError(str(exc)) from None

    profile_set = memo.profiles.get_or_compute(("set", key), build)
    assert isinstance(profile_set, ProfileSet)
    return ChosenProfiles(profile_set=profile_set, chosen=chosen, key=key)


def _role_instances(document: ProfileDocument, role: Role) -> tuple[InstanceProfile, ...]:
    assert document.content is not None
    try:
        _, instances = parse_profile_instances(document.content, document.where)
    except ProfileFormatError as exc:
        raise ProfileError(str(exc)) from None
    mine = tuple(i for i in instances if i.role == role)
    if not mine:
        raise ProfileError(f"{document.where}: no {role} instance profile")
    return mine


__all__ = ["ChosenProfiles", "ProfileDocument", "ProfileError", "choose_profiles"]
