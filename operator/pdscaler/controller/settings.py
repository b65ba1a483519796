"""Operator settings: read from ``PDSCALER_*`` environment variables and command-line flags.

Every value is validated at start-up; a bad value stops the operator before it touches the
cluster, with one line per problem naming the setting, its source and the value.

==============================  =======================================  ===================
setting                         environment variable                     default
==============================  =======================================  ===================
prometheus_url                  ``PDSCALER_PROMETHEUS_URL``              none (per object)
prometheus_timeout_s            ``PDSCALER_PROMETHEUS_TIMEOUT_S``        5
default_interval_s              ``PDSCALER_INTERVAL_S``                  30
workers                         ``PDSCALER_WORKERS``                     8
metrics_port                    ``PDSCALER_METRICS_PORT``                9808 (0: off)
health_port                     ``PDSCALER_HEALTH_PORT``                 8080 (0: off)
log_format                      ``PDSCALER_LOG_FORMAT``                  json
log_level                       ``PDSCALER_LOG_LEVEL``                   INFO
history_length                  ``PDSCALER_HISTORY_LENGTH``              10
profile_cache_ttl_s             ``PDSCALER_PROFILE_CACHE_TTL_S``         60
capacity_cache_ttl_s            ``PDSCALER_CAPACITY_CACHE_TTL_S``        30
metric_names_ttl_s              ``PDSCALER_METRIC_NAMES_TTL_S``          600
kube_timeout_s                  ``PDSCALER_KUBE_TIMEOUT_S``              10
autoscaler_cache_ttl_s          ``PDSCALER_AUTOSCALER_CACHE_TTL_S``      30
prometheus_bearer_token_file    ``PDSCALER_PROMETHEUS_BEARER_TOKEN_FILE`` none
prometheus_basic_auth_file      ``PDSCALER_PROMETHEUS_BASIC_AUTH_FILE``  none (``user:pass``)
prometheus_username_file        ``PDSCALER_PROMETHEUS_USERNAME_FILE``    none
prometheus_password_file        ``PDSCALER_PROMETHEUS_PASSWORD_FILE``    none
prometheus_ca_file              ``PDSCALER_PROMETHEUS_CA_FILE``          system CAs
prometheus_headers              ``PDSCALER_PROMETHEUS_HEADERS``          none (``;``-separated)
peering_name                    ``PDSCALER_PEERING``                     pdscaler
standalone                      ``PDSCALER_STANDALONE``                  false
priority                        ``PDSCALER_PRIORITY``                    by start time
==============================  =======================================  ===================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from planner.common import validation_problems

ENV_PREFIX = "PDSCALER_"
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


class SettingsError(ValueError):
    """Operator settings are invalid; the message has one line per problem."""


class OperatorSettings(BaseModel):
    """Validated operator settings (frozen)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    prometheus_url: str | None = None
    prometheus_timeout_s: float = Field(default=5.0, gt=0, le=120)
    default_interval_s: float = Field(default=30.0, ge=1, le=3600)
    workers: int = Field(default=8, ge=1, le=64)
    metrics_port: int = Field(default=9808, ge=0, le=65535)
    health_port: int = Field(default=8080, ge=0, le=65535)
    bind_address: str = "0.0.0.0"
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    history_length: int = Field(default=10, ge=1, le=50)
    profile_cache_ttl_s: float = Field(default=60.0, ge=0, le=86_400)
    capacity_cache_ttl_s: float = Field(default=30.0, ge=0, le=3600)
    metric_names_ttl_s: float = Field(default=600.0, ge=0, le=86_400)
    kube_timeout_s: float = Field(default=10.0, gt=0, le=300)
    autoscaler_cache_ttl_s: float = Field(default=30.0, ge=0, le=3600)
    prometheus_bearer_token_file: str | None = None
    prometheus_basic_auth_file: str | None = None
    prometheus_username_file: str | None = None
    prometheus_password_file: str | None = None
    prometheus_ca_file: str | None = None
    prometheus_headers: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    peering_name: str = "pdscaler"
    standalone: bool = False
    priority: int | None = None

    @field_validator("prometheus_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL with a host")
        try:
            parsed.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"{value!r} has an invalid port") from None
        return value.rstrip("/")

    @field_validator(
        "prometheus_bearer_token_file", "prometheus_basic_auth_file", "prometheus_username_file",
        "prometheus_password_file", "prometheus_ca_file",
    )
    @classmethod
    def _readable_file(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not os.path.isfile(value):
            raise ValueError(f"{value!r} is not a file")
        if not os.access(value, os.R_OK):
            raise ValueError(f"{value!r} cannot be read")
        return value

    @field_validator("prometheus_headers")
    @classmethod
    def _headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for header in value:
            name, sep, text = header.partition(":")
            if not sep or not HEADER_NAME.match(name.strip()) or not text.strip():
                raise ValueError(f"{header!r} is not 'Name: value'")
            if "\n" in header or "\r" in header:
                raise ValueError(f"{header!r} must be one line")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> OperatorSettings:
        given = [name for name, value in (
            ("prometheus_bearer_token_file", self.prometheus_bearer_token_file),
            ("prometheus_basic_auth_file", self.prometheus_basic_auth_file),
            ("prometheus_username_file", self.prometheus_username_file),
        ) if value]
        if len(given) > 1:
            raise ValueError(f"give one Prometheus credential, not {' and '.join(given)}")
        if bool(self.prometheus_username_file) != bool(self.prometheus_password_file):
            raise ValueError("prometheus_username_file and prometheus_password_file go "
                             "together")
        return self

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for namespace in value:
            if not K8S_NAME.match(namespace) or len(namespace) > 63:
                raise ValueError(f"{namespace!r} is not a namespace name")
        return value

    @field_validator("peering_name")
    @classmethod
    def _peering(cls, value: str) -> str:
        if not K8S_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid object name")
        return value


_ENV_FIELDS = {
    "prometheus_url": "PROMETHEUS_URL",
    "prometheus_timeout_s": "PROMETHEUS_TIMEOUT_S",
    "default_interval_s": "INTERVAL_S",
    "workers": "WORKERS",
    "metrics_port": "METRICS_PORT",
    "health_port": "HEALTH_PORT",
    "bind_address": "BIND_ADDRESS",
    "log_format": "LOG_FORMAT",
    "log_level": "LOG_LEVEL",
    "history_length": "HISTORY_LENGTH",
    "profile_cache_ttl_s": "PROFILE_CACHE_TTL_S",
    "capacity_cache_ttl_s": "CAPACITY_CACHE_TTL_S",
    "metric_names_ttl_s": "METRIC_NAMES_TTL_S",
    "kube_timeout_s": "KUBE_TIMEOUT_S",
    "autoscaler_cache_ttl_s": "AUTOSCALER_CACHE_TTL_S",
    "prometheus_bearer_token_file": "PROMETHEUS_BEARER_TOKEN_FILE",
    "prometheus_basic_auth_file": "PROMETHEUS_BASIC_AUTH_FILE",
    "prometheus_username_file": "PROMETHEUS_USERNAME_FILE",
    "prometheus_password_file": "PROMETHEUS_PASSWORD_FILE",
    "prometheus_ca_file": "PROMETHEUS_CA_FILE",
    "prometheus_headers": "PROMETHEUS_HEADERS",
    "namespaces": "NAMESPACES",
    "all_namespaces": "ALL_NAMESPACES",
    "peering_name": "PEERING",
    "standalone": "STANDALONE",
    "priority": "PRIORITY",
}


FLAGS = {
    "default_interval_s": "--interval",
    "namespaces": "--namespace",
    "peering_name": "--peering",
}
"""Command-line flags whose name is not the setting's name with dashes."""


def flag_of(field: str) -> str:
    """The command-line flag that sets ``field``.

    >>> flag_of("default_interval_s"), flag_of("metrics_port")
    ('--interval', '--metrics-port')
    """
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def _from_env(field: str, raw: str) -> Any:
    if field == "namespaces":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if field == "prometheus_headers":
        return tuple(part.strip() for part in raw.split(";") if part.strip())
    if field in ("standalone", "all_namespaces"):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        return raw  # refused by validation with the value shown
    if field == "log_level":
        return raw.strip().upper()
    return raw.strip()


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> OperatorSettings:
    """Settings from ``PDSCALER_*`` variables, then ``overrides`` (flags given on the command line).

    Raises
    ------
    SettingsError
        One line per invalid setting, naming where it came from.

    Examples
    --------
    >>> load_settings({"PDSCALER_INTERVAL_S": "15"}).default_interval_s
    15.0
    >>> try:
    ...     load_settings({"PDSCALER_PROMETHEUS_URL": "prometheus:9090"})
    ... except SettingsError as exc:
    ...     print(exc)  # doctest: +ELLIPSIS
    prometheus_url (PDSCALER_PROMETHEUS_URL='prometheus:9090'): ... is not an http(s) URL ...
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field, suffix in _ENV_FIELDS.items():
        name = ENV_PREFIX + suffix
        if name in env:
            values[field] = _from_env(field, env[name])
            sources[field] = f"{name}={env[name]!r}"
    for field, value in (overrides or {}).items():
        if value is None:
            continue
        values[field] = value
        sources[field] = f"{flag_of(field)}={value!r}"
    try:
        return OperatorSettings.model_validate(values)
    except ValidationError as exc:
        lines = []
        for location, message, _ in validation_problems(exc):
            field = location or "settings"
            where = sources.get(location.split(".")[0], "")
            lines.append(f"{field} ({where}): {message}" if where else f"{field}: {message}")
        raise SettingsError("\n".join(lines)) from None


__all__ = ["OperatorSettings", "SettingsError", "load_settings"]
