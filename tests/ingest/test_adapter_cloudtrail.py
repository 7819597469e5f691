"""AWS CloudTrail records as contract events: small records from a factory, then the real
captures in tests/fixtures/cloudtrail (Stratus Red Team detonations, see NOTICE.md)."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from test_adapter_support import FIXTURES, mapped, merged, one, run, stats, unmapped

from tokentrail.config import AdapterSettings
from tokentrail.events import InvalidEventError
from tokentrail.ingest.adapters import FLAG_TOKEN_FALLBACK, cloudtrail

CAPTURES = sorted((FIXTURES / "cloudtrail").glob("*.json"))
ACCOUNT = "123456789012"
_ids = itertools.count(1)


def record(**overrides: Any) -> dict[str, Any]:
    """A CloudTrail record (an IAM user reading an S3 object); override any field by keyword."""
    base: dict[str, Any] = {
        "eventVersion": "1.09",
        "eventID": f"0e5a7c1e-0000-4000-8000-{next(_ids):012d}",
        "eventTime": "2024-07-30T21:31:21Z",
        "eventSource": "s3.amazonaws.com",
        "eventName": "GetObject",
        "eventType": "AwsApiCall",
        "awsRegion": "eu-west-1",
        "recipientAccountId": ACCOUNT,
        "sourceIPAddress": "198.51.100.7",
        "userAgent": "aws-cli/2.15.0",
        "requestID": "req-1",
        "readOnly": True,
        "requestParameters": {"bucketName": "invoices", "key": "2024/07.pdf"},
        "responseElements": None,
        "userIdentity": {
            "type": "IAMUser",
            "principalId": "AIDAEXAMPLEUSER",
            "arn": f"arn:aws:iam::{ACCOUNT}:user/ci-deployer",
            "accountId": ACCOUNT,
            "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
            "userName": "ci-deployer",
        },
    }
    # A call's parameters and response are replaced whole; anything else is merged.
    for whole in ("requestParameters", "responseElements"):
        if whole in overrides:
            base[whole] = overrides.pop(whole)
    return merged(base, overrides)


def session(name: str = "build-42", **context: Any) -> dict[str, Any]:
    """The userIdentity of a role session (`deployer` assumed as `name`)."""
    return {
        "type": "AssumedRole",
        "principalId": f"AROAEXAMPLEROLE:{name}",
        "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/{name}",
        "accountId": ACCOUNT,
        "accessKeyId": "ASIAEXAMPLESESSION01",
        "sessionContext": merged(
            {
                "sessionIssuer": {
                    "type": "Role",
                    "principalId": "AROAEXAMPLEROLE",
                    "arn": f"arn:aws:iam::{ACCOUNT}:role/deployer",
                    "accountId": ACCOUNT,
                    "userName": "deployer",
                },
                "attributes": {"creationDate": "2024-07-30T21:00:00Z", "mfaAuthenticated": "false"},
            },
            context,
        ),
    }


def event(**overrides: Any) -> Any:
    return one(cloudtrail.adapt, record(**overrides))


def test_an_iam_user_call_maps_field_by_field() -> None:
    assert event(eventID="e-1") == {
        "event_id": "e-1",
        "ts": "2024-07-30T21:31:21Z",
        "token_id": "AKIAIOSFODNN7EXAMPLE",
        "identity": f"arn:aws:iam::{ACCOUNT}:user/ci-deployer",
        "source": "ci-deployer",
        "target": "s3.amazonaws.com",
        "operation": "s3:GetObject",
        "scope": "s3:GetObject",
        "outcome": "success",
        # An IAM user may be a person or a program: the record does not say which.
        "identity_kind": "unknown",
        "environment": ACCOUNT,
        "resource": "invoices/2024/07.pdf",
        "source_ip": "198.51.100.7",
        "user_agent": "aws-cli/2.15.0",
        "token": {"kind": "aws:access-key"},
        "attributes": {
            "cloud.provider": "aws",
            "cloud.account.id": ACCOUNT,
            "cloud.region": "eu-west-1",
            "aws.event_type": "AwsApiCall",
            "aws.request_id": "req-1",
            "aws.read_only": True,
            "aws.principal_type": "IAMUser",
            "aws.principal_id": "AIDAEXAMPLEUSER",
        },
    }


def test_a_role_session_is_its_own_identity_with_its_issuer_as_actor() -> None:
    mapped_event = event(userIdentity=session())
    assert {k: mapped_event[k] for k in ("identity", "source", "actor", "token")} == {
        "identity": f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/build-42",
        "source": "deployer/build-42",
        "actor": f"arn:aws:iam::{ACCOUNT}:role/deployer",
        "token": {"kind": "aws:session", "issued_at": "2024-07-30T21:00:00Z"},
    }
    assert (
        mapped_event["attributes"]["aws.session_issuer"] == f"arn:aws:iam::{ACCOUNT}:role/deployer"
    )


def test_a_source_identity_is_the_actor_of_a_role_session() -> None:
    mapped_event = event(userIdentity=session(sourceIdentity="alice@example.com"))
    assert mapped_event["actor"] == "alice@example.com"


GITHUB_OIDC = "arn:aws:iam::1:oidc-provider/token.actions.githubusercontent.com"
SSO_ROLE = f"arn:aws:iam::{ACCOUNT}:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_admin_1"


@pytest.mark.parametrize(
    ("who", "kind"),
    [
        (session("i-0abc1234def567890"), "service"),  # an instance profile, named after it
        (session(ec2RoleDelivery="2.0"), "service"),
        (session(webIdFederationData={"federatedProvider": GITHUB_OIDC}), "ci"),
        (session(sessionIssuer={"arn": SSO_ROLE}), "user"),
        ({"type": "Root", "arn": f"arn:aws:iam::{ACCOUNT}:root", "accountId": ACCOUNT}, "user"),
        ({"type": "AWSService", "invokedBy": "lambda.amazonaws.com"}, "service"),
        (session(), "unknown"),
    ],
)
def test_identity_kind_is_set_only_on_evidence(who: dict[str, Any], kind: str) -> None:
    assert event(userIdentity=who)["identity_kind"] == kind


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        ("AccessDenied", "denied"),
        ("AccessDeniedException", "denied"),
        ("Client.UnauthorizedOperation", "denied"),
        ("UnauthorizedOperation", "denied"),
        ("ExpiredTokenException", "denied"),
        ("ThrottlingException", "error"),
        ("EntityTemporarilyUnmodifiableException", "error"),
    ],
)
def test_error_codes_give_the_outcome(code: str, outcome: str) -> None:
    mapped_event = event(errorCode=code, errorMessage="no")
    assert (mapped_event["outcome"], mapped_event["attributes"]["aws.error_code"]) == (
        outcome,
        code,
    )


def test_a_failed_console_sign_in_is_denied_and_keyless_calls_get_a_stable_stand_in() -> None:
    no_key = {"accessKeyId": None, "type": "IAMUser"}
    sign_in = {
        "eventSource": "signin.amazonaws.com",
        "eventName": "ConsoleLogin",
        "eventType": "AwsConsoleSignIn",
        "userIdentity": no_key,
        "responseElements": {"ConsoleLogin": "Failure"},
        "requestParameters": None,
    }
    first, second = event(**sign_in), event(**sign_in)
    assert first["outcome"] == "denied"
    assert first["identity_kind"] == "user"
    assert first["token_id"] == second["token_id"]
    assert first["token_id"].startswith("aws-principal:")
    assert first["flags"] == [FLAG_TOKEN_FALLBACK]
    assert "token" not in first


def test_a_call_by_an_aws_service_is_sourced_at_the_service() -> None:
    mapped_event = event(sourceIPAddress="lambda.amazonaws.com")
    assert mapped_event["source"] == "lambda.amazonaws.com"
    assert "source_ip" not in mapped_event
    assert mapped_event["attributes"]["aws.source_address"] == "lambda.amazonaws.com"


def test_operation_is_the_iam_action_even_for_versioned_lambda_names() -> None:
    mapped_event = event(
        eventSource="lambda.amazonaws.com",
        eventName="UpdateFunctionCode20150331v2",
        requestParameters={"functionName": "billing"},
    )
    assert (mapped_event["operation"], mapped_event["resource"]) == (
        "lambda:UpdateFunctionCode",
        "billing",
    )
    assert mapped_event["attributes"]["aws.event_name"] == "UpdateFunctionCode20150331v2"


def test_resource_prefers_resource_arns_and_keeps_them_all() -> None:
    arns = [f"arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/p{n}" for n in range(3)]
    mapped_event = event(resources=[{"ARN": arn, "accountId": ACCOUNT} for arn in arns])
    assert mapped_event["resource"] == arns[0]
    assert mapped_event["attributes"]["aws.resources"] == arns


def test_a_cross_account_caller_is_recorded_and_environments_can_be_named() -> None:
    who = merged(session(), {"accountId": "999999999999"})
    mapped_event = one(
        cloudtrail.adapt,
        record(userIdentity=who),
        aws_account_environments={ACCOUNT: "prod"},
    )
    assert mapped_event["environment"] == "prod"
    assert mapped_event["attributes"]["aws.caller_account_id"] == "999999999999"


def assume_role(**overrides: Any) -> dict[str, Any]:
    call: dict[str, Any] = dict(
        eventSource="sts.amazonaws.com",
        eventName="AssumeRole",
        requestParameters={"roleArn": f"arn:aws:iam::{ACCOUNT}:role/deployer"},
        responseElements={
            "credentials": {
                "accessKeyId": "ASIANEWSESSIONKEY001",
                "sessionToken": "IQoJb3JpZ2luX2VjEXAMPLE",
                "expiration": "Jul 30, 2024, 9:46:15 PM",
            },
            "assumedRoleUser": {
                "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/build-42",
                "assumedRoleId": "AROAEXAMPLEROLE:build-42",
            },
        },
    )
    return record(**(call | overrides))


def test_an_issued_credential_is_recorded_as_a_child_of_the_callers_token() -> None:
    mapped_event = one(cloudtrail.adapt, assume_role())
    assert mapped_event["token_id"] == "AKIAIOSFODNN7EXAMPLE"
    assert mapped_event["attributes"]["issued_token"] == {
        "token_id": "ASIANEWSESSIONKEY001",
        "kind": "aws:session",
        "issued_at": "2024-07-30T21:31:21Z",
        "identity": f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/build-42",
        "expires_at": "2024-07-30T21:46:15Z",
    }
    # The session token is a secret: nothing of the response but the key id is kept.
    assert b"IQoJb3JpZ2lu" not in msgspec.json.encode(mapped_event)


def test_a_created_access_key_belongs_to_the_user_it_was_created_for() -> None:
    mapped_event = event(
        eventSource="iam.amazonaws.com",
        eventName="CreateAccessKey",
        requestParameters={"userName": "backdoor"},
        responseElements={
            "accessKey": {
                "accessKeyId": "AKIANEWKEYFORBACKDR",
                "createDate": "Jul 30, 2024 9:53:13 PM",
                "status": "Active",
                "userName": "backdoor",
            }
        },
    )
    assert mapped_event["attributes"]["issued_token"] == {
        "token_id": "AKIANEWKEYFORBACKDR",
        "kind": "aws:access-key",
        "identity": f"arn:aws:iam::{ACCOUNT}:user/backdoor",
        "issued_at": "2024-07-30T21:53:13Z",
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {"errorCode": "AccessDenied", "responseElements": None},
        {"userIdentity": {"type": "AWSService", "invokedBy": "ec2.amazonaws.com"}},
    ],
    ids=["refused", "issued-by-aws"],
)
def test_no_lineage_from_refused_calls_or_from_aws_itself(overrides: dict[str, Any]) -> None:
    assert "issued_token" not in one(cloudtrail.adapt, assume_role(**overrides))["attributes"]


def test_containers_s3_delivery_eventbridge_and_arrays_expand_to_their_records() -> None:
    records = [record(eventID=f"c-{n}") for n in range(3)]
    delivery = {"Records": records}
    bridge = {"version": "0", "detail-type": "AWS API Call via CloudTrail", "detail": records[0]}
    shipped = merged(records[1], {"@timestamp": "2024-07-30T21:31:22.001Z", "host": "vector-0"})
    assert [e["event_id"] for e in mapped(cloudtrail.adapt, delivery)] == ["c-0", "c-1", "c-2"]
    assert [e["event_id"] for e in mapped(cloudtrail.adapt, records)] == ["c-0", "c-1", "c-2"]
    assert one(cloudtrail.adapt, bridge)["event_id"] == "c-0"
    assert one(cloudtrail.adapt, shipped)["event_id"] == "c-1"


def test_a_bad_record_in_a_delivery_file_is_dead_lettered_alone_with_its_reason() -> None:
    bad = record(eventID="bad", eventTime="yesterday")
    delivery = {"Records": [record(), bad, record(userIdentity=None)]}
    letters = unmapped(cloudtrail.adapt, delivery)
    assert [letter.reason for letter in letters] == [
        "cloudtrail: Records[1]: `eventTime` 'yesterday' is not an ISO 8601 time",
        "cloudtrail: Records[2]: record has no `userIdentity`",
    ]
    # The dead letter is the record itself: it can be fed again once fixed.
    assert json.loads(letters[0].source) == bad


def test_an_unusable_record_raises_with_a_reason_naming_the_format() -> None:
    with pytest.raises(InvalidEventError, match=r"^cloudtrail: .*"):
        cloudtrail.adapt(b'{"Records": [', AdapterSettings())
    assert unmapped(cloudtrail.adapt, record(eventType="AwsCloudTrailInsight"))[0].reason == (
        "cloudtrail: an Insights event reports a trend, not an API call"
    )


@pytest.mark.parametrize("path", CAPTURES, ids=[p.stem for p in CAPTURES])
def test_every_real_record_maps_to_a_valid_event(path: Path) -> None:
    records = json.loads(path.read_bytes())
    events = mapped(cloudtrail.adapt, path.read_bytes())
    assert [e["event_id"] for e in events] == [r["eventID"] for r in records]


def test_the_real_captures_keep_who_used_which_key() -> None:
    events = [e for p in CAPTURES for e in mapped(cloudtrail.adapt, p.read_bytes())]
    assert len(events) == 310
    federation = [e for e in events if e["operation"] == "sts:GetFederationToken"]
    assert [e["attributes"]["issued_token"]["token_id"] for e in federation] == [
        "ASIASTJKC5GCM7ZE6LUP"
    ]
    used = [e for e in events if e["token_id"] == "ASIASTJKC5GCM7ZE6LUP"]
    assert [(e["identity"], e["actor"]) for e in used] == [
        (
            "arn:aws:sts::742491224508:federated-user/stratus_red_team",
            "arn:aws:iam::742491224508:user/stratus-red-team-user-federation-user",
        )
    ]
    stolen = {e["identity_kind"] for e in events if "/i-786a3A8B5C0d92eF4" in e["identity"]}
    assert stolen == {"service"}


def test_every_capture_ingests_with_no_dead_letter_and_links_the_keys_it_issued(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ct.duckdb"
    result = run("ingest", *CAPTURES, "--db", db, "--format", "cloudtrail", "--no-detect")
    assert result.returncode == 0, result.stderr
    counts = stats(db)
    assert (counts["events"], counts["dead_letters"]) == (310, 0)
    with duckdb.connect(str(db), read_only=True) as conn:
        links = conn.execute(
            "SELECT child_token_id, parent_token_id FROM token_links ORDER BY child_token_id"
        ).fetchall()
    assert ("ASIASTJKC5GCM7ZE6LUP", "AKIA6V1GNZTT65XQH36M") in links
    assert ("AKIAL80DWDVKKM0UXEER", "AKIA30BEZSJBVKOFKZW0") in links


def test_s3_delivery_files_pretty_json_and_shipped_lines_ingest_through_the_command(
    tmp_path: Path,
) -> None:
    records = json.loads(
        (FIXTURES / "cloudtrail" / "aws.execution.ssm-send-command.json").read_bytes()
    )
    gzipped = tmp_path / "123456789012_CloudTrail_eu-west-1_20240730T2135Z_a1b2.json.gz"
    gzipped.write_bytes(gzip.compress(json.dumps({"Records": records[:10]}).encode()))
    pretty = tmp_path / "export.json"
    pretty.write_text(json.dumps({"Records": records[10:20]}, indent=2))
    lines = tmp_path / "shipped.jsonl"
    lines.write_text(
        "".join(json.dumps(r | {"@timestamp": r["eventTime"]}) + "\n" for r in records[20:])
    )
    db = tmp_path / "t.duckdb"
    assert run("ingest", gzipped, pretty, lines, "--db", db, "--no-detect").returncode == 0
    assert (stats(db)["events"], stats(db)["dead_letters"]) == (len(records), 0)
