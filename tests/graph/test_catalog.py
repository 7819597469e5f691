"""The service catalog: loading, defaults, one-line errors, and operation classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokentrail.catalog import (
    DEFAULT_SENSITIVITY,
    Catalog,
    IdentityPolicy,
    Service,
    load_catalog,
    privilege_of,
)
from tokentrail.errors import ConfigError

EXAMPLE = """
[privilege]          # weight per operation class
read = 1.0
write = 3.0
admin = 10.0

[[service]]
name = "payments-db"
environment = "prod"
sensitivity = 10                     # 1 (public, e.g. status-page) .. 10 (crown jewel)
scopes = ["payments:read", "payments:write"]   # scopes that grant access to it

[[service]]
name = "status-page"
sensitivity = 1

[[identity]]                          # declared policy: what an identity is meant to reach
name = "spiffe://prod/ns/billing/sa/invoicer"
kind = "service"
environment = "prod"
allowed_targets = ["payments-db", "ledger-api"]
allowed_scopes = ["payments:read", "ledger:write"]
"""


def write(tmp_path: Path, text: str, name: str = "catalog.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_the_documented_format(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, EXAMPLE))
    assert catalog.service("payments-db") == Service(
        name="payments-db",
        environment="prod",
        sensitivity=10,
        scopes=("payments:read", "payments:write"),
    )
    assert catalog.identity("spiffe://prod/ns/billing/sa/invoicer") == IdentityPolicy(
        name="spiffe://prod/ns/billing/sa/invoicer",
        kind="service",
        environment="prod",
        allowed_targets=("payments-db", "ledger-api"),
        allowed_scopes=("payments:read", "ledger:write"),
    )
    assert (catalog.sensitivity("payments-db"), catalog.sensitivity("status-page")) == (10, 1)
    assert catalog.services_for_scopes(["payments:write", "other"]) == {
        "payments-db": ["payments:write"]
    }
    assert catalog.maps_scopes


def test_defaults_without_a_catalog() -> None:
    catalog = Catalog()
    assert catalog.sensitivity("anything") == DEFAULT_SENSITIVITY == 3
    assert [catalog.weight(p) for p in ("read", "write", "admin")] == [1.0, 3.0, 10.0]
    assert (catalog.score.environment_crossing, catalog.score.chain) == (2.0, 0.5)
    assert not catalog.maps_scopes


def test_score_table_overrides_the_factors(tmp_path: Path) -> None:
    catalog = load_catalog(
        write(tmp_path, "[score]\ndefault_sensitivity = 5\nenvironment_crossing = 3.0\n")
    )
    assert (catalog.sensitivity("x"), catalog.score.environment_crossing) == (5, 3.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[service]]\nname = 'db'\nsensitivity = 11\n", "service.0.sensitivity"),
        ("[[service]]\nsensitivity = 4\n", "service.0.name: Field required"),
        ("[[service]]\nname = 'db'\n[[service]]\nname = 'db'\n", "service 'db' is declared twice"),
        ("[privilege]\nread = 0\n", "privilege.read"),
        ("[privilege]\nroot = 1.0\n", "privilege.root: Extra inputs are not permitted"),
        ("[[service]\nname = 'db'\n", "is not valid TOML"),
    ],
)
def test_a_bad_catalog_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_catalog(write(tmp_path, text))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_catalog_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read catalog"):
        load_catalog(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("operation", "scope", "expected"),
    [
        ("GET /invoices/42", None, "read"),
        ("HEAD /health", None, "read"),
        ("OPTIONS /", None, "read"),
        ("get /content/personal", None, "read"),  # Zipkin span names are lower case
        ("POST /invoices", None, "write"),
        ("PUT /invoices/42", None, "write"),
        ("PATCH /invoices/42", None, "write"),
        ("DELETE /invoices/42", None, "write"),
        ("GET /admin/settings", None, "admin"),
        ("POST /users", None, "admin"),  # user management
        ("PUT /roles/auditor", None, "admin"),
        ("GET /users/42", None, "read"),
        ("s3:GetObject", None, "read"),
        ("s3:ListBucket", None, "read"),
        ("ec2:DescribeInstances", None, "read"),
        ("s3:PutObject", None, "write"),
        ("ec2:TerminateInstances", None, "write"),
        ("s3:PutBucketPolicy", None, "admin"),
        ("lambda:AddPermission", None, "admin"),
        ("iam:CreateAccessKey", None, "admin"),
        ("iam:AttachUserPolicy", None, "admin"),
        ("iam:ListUsers", None, "read"),
        ("sts:AssumeRole", None, "admin"),
        ("sts:GetSessionToken", None, "admin"),
        ("sts:GetCallerIdentity", None, "read"),
        ("organizations:LeaveOrganization", None, "admin"),
        ("/ledger.Ledger/GetEntry", None, "read"),
        ("Ledger.UpdateEntry", None, "write"),
        ("GET /x", "payments:admin", "admin"),
        ("GET /x", "ledger:write", "write"),
        ("POST /search", "catalog:read", "read"),
        ("GET /x", "read:org", "read"),
        ("frobnicate", None, "read"),
    ],
)
def test_privilege_of(operation: str, scope: str | None, expected: str) -> None:
    assert privilege_of(operation, scope) == expected
