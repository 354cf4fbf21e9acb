"""Filesystems for inputs and outputs: local paths and ``s3://`` URIs through fsspec (s3fs).

Contract:

* ``Storage`` carries S3 settings: endpoint, region, and optionally explicit credentials. Anything left unset
  comes from the usual places: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and ``AWS_REGION`` /
  ``AWS_DEFAULT_REGION`` for endpoint and region (read here, so s3fs sees them whatever its version), and
  botocore's own credential chain (``AWS_ACCESS_KEY_ID`` ..., profiles, instance roles) for credentials.
* Credentials never reach a log line, an exception message, a result row or a ``repr``: ``Storage.__repr__``
  redacts them and ``display_uri`` strips any ``user:password@`` part of a URI.
* Transient S3 failures (connection refused or reset, timeouts, throttling, 5xx) are retried by botocore
  itself: ``Storage.retries`` attempts per request in botocore's ``standard`` retry mode (exponential
  backoff with jitter, at most 20 s between attempts; the default of 10 attempts rides out about a minute
  and a half of outage). Errors that retrying cannot fix (no such key, access denied) fail at once.
* ``get_fs(uri)`` returns ``(filesystem, path)`` where ``path`` is what the filesystem's methods take; paths
  without a protocol are local and made absolute.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.core import split_protocol
from fsspec.spec import AbstractFileSystem

REMOTE_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "memory")
#: Attempts per S3 request (the first one included) before a transient error is raised.
DEFAULT_S3_RETRIES = 10


@dataclass(frozen=True)
class Storage:
    """Settings for remote object stores. Secrets are kept out of ``repr`` and logs."""

    endpoint_url: str | None = None
    region: str | None = None
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    anon: bool = False
    retries: int = DEFAULT_S3_RETRIES

    def __post_init__(self) -> None:
        if self.retries < 1:
            raise ValueError(f"storage retries must be at least 1 (a single attempt), not {self.retries}")

    @classmethod
    def from_env(cls, **explicit: Any) -> Storage:
        """Explicit settings win; endpoint and region fall back to the standard AWS environment variables."""
        values = {k: v for k, v in explicit.items() if v is not None}
        values.setdefault(
            "endpoint_url", os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        values.setdefault("region", os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
        return cls(**values)

    def options(self, protocol: str) -> dict[str, Any]:
        """fsspec constructor arguments for ``protocol`` (nothing for local files)."""
        if protocol not in ("s3", "s3a"):
            return {}
        opts: dict[str, Any] = {}
        client: dict[str, Any] = {}
        if self.endpoint_url:
            client["endpoint_url"] = self.endpoint_url
        if self.region:
            client["region_name"] = self.region
        if client:
            opts["client_kwargs"] = client
        # botocore's own retry loop: "standard" mode retries connection errors, timeouts, throttling and
        # 5xx responses with capped exponential backoff, and counts the first attempt in max_attempts.
        opts["config_kwargs"] = {"retries": {"max_attempts": self.retries, "mode": "standard"}}
        if self.anon:
            opts["anon"] = True
        if self.key:
            opts["key"] = self.key
        if self.secret:
            opts["secret"] = self.secret
        if self.token:
            opts["token"] = self.token
        return opts

    def __repr__(self) -> str:
        creds = "explicit credentials" if self.key or self.secret or self.token else "default credentials"
        return (
            f"Storage(endpoint_url={self.endpoint_url!r}, region={self.region!r}, {creds}, "
            f"retries={self.retries})"
        )

    __str__ = __repr__


def protocol_of(uri: str) -> str:
    protocol, _ = split_protocol(uri)
    return protocol or "file"


def is_remote(uri: str) -> bool:
    return protocol_of(uri) in REMOTE_PROTOCOLS


def normalize_uri(uri: str) -> str:
    """Local paths become absolute (``~`` expanded); remote URIs are kept as given."""
    if protocol_of(uri) == "file":
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return os.path.abspath(os.path.expanduser(path))
    return uri


def get_fs(uri: str, storage: Storage | None = None) -> tuple[AbstractFileSystem, str]:
    protocol = protocol_of(uri)
    # no storage given: the standard AWS variables, as the driver's (AWS_REGION is not botocore's)
    fs = fsspec.filesystem(protocol, **(storage or Storage.from_env()).options(protocol))
    if protocol == "file":
        return fs, normalize_uri(uri)
    return fs, fs._strip_protocol(uri)


# Credentials before the host: up to the authority's last "@" (a password may hold "@"), or a
# "key:secret@" whose secret holds a "/" (AWS secrets often do, unencoded).
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^/?#]*@|[^/@:?#]+:[^@]*@)")


def display_uri(uri: str) -> str:
    """The URI without any embedded credentials, for rows and logs."""
    return _USERINFO.sub(r"\1", uri)


#: Query parameters that carry credentials: pre-signed URLs (SigV2's AWSAccessKeyId/Signature, SigV4's
#: X-Amz-Credential/Signature/Security-Token).
_QUERY_CREDENTIALS = re.compile(
    r"[?&](AWSAccessKeyId|Signature|X-Amz-Credential|X-Amz-Signature|X-Amz-Security-Token)=", re.IGNORECASE
)


def check_no_credentials(uri: str, setting: str) -> str:
    """``uri`` unchanged, or ``ValueError`` when a remote URI carries credentials (``key:secret@`` or a
    pre-signed query): they would travel in every descriptor, row and job record, so they are refused,
    naming the settings meant for them. The message shows the URI without them."""
    if protocol_of(uri) == "file":  # a local name may hold '@', ':' or '?'
        return uri
    if _USERINFO.match(uri):
        found = "a user:password part"
    elif _QUERY_CREDENTIALS.search(uri):
        found = "credentials in its query"
    else:
        return uri
    shown = display_uri(uri).split("?", 1)[0]
    raise ValueError(
        f"{setting} {shown} carries {found}, which is refused (the URI would put the secret in logs, rows "
        "and job records): remove them from the URI and set storage.key and storage.secret (and "
        "storage.token) in the config, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE where the "
        "job runs"
    )
