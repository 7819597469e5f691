"""AWS CloudTrail records as contract events; the field mapping is in docs/ADAPTERS.md.

One input record may be a CloudTrail record (a JSON line, as log shippers export them, extra
fields such as `@timestamp` ignored), the S3 delivery document `{"Records": [...]}`, a JSON array
of records, or an EventBridge event whose `detail` is a record. Each record is one event.

A call that issues a credential (AssumeRole*, GetSessionToken, GetFederationToken, AssumeRoot,
CreateAccessKey) names the new key in its response: the event records it under
`attributes.issued_token` with the caller's token as its parent, so the store can link the new
key into the caller's lineage (see docs/ADAPTERS.md, "Lineage").

>>> from tokentrail.config import AdapterSettings
>>> [item] = adapt(b'{"eventID": "e1", "eventTime": "2024-11-30T08:43:17Z",'
...     b' "eventSource": "sts.amazonaws.com", "eventName": "GetCallerIdentity",'
...     b' "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::1:user/ci",'
...     b' "accessKeyId": "AKIAEXAMPLE"}}', AdapterSettings())
>>> msgspec.json.decode(item.event)["operation"]
'sts:GetCallerIdentity'
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

import msgspec

from tokentrail.config import AdapterSettings
from tokentrail.events import InvalidEventError
from tokentrail.ingest.adapters import (
    DECODE_ERRORS,
    FLAG_IDENTITY_FALLBACK,
    FLAG_TOKEN_FALLBACK,
    Item,
    Mapped,
    Unmapped,
    clip,
    encode,
    stable_hash,
    why,
)

NAME: Final = "cloudtrail"

# errorCode values that mean the caller was refused (authorisation or authentication), not that
# the call broke: `AccessDenied`, `Client.UnauthorizedOperation`, `ExpiredTokenException` ...
_DENIED: Final = re.compile(
    r"AccessDenied|Unauthori[sz]ed|Forbidden|NotAuthorized|AuthFailure|InvalidClientTokenId"
    r"|SignatureDoesNotMatch|ExpiredToken|InvalidAccessKeyId",
    re.IGNORECASE,
)
# sourceIPAddress is an address, or for calls made by AWS services the service's name.
_IP: Final = re.compile(r"^(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$")
# CloudTrail's own time layout, which the contract takes as it is.
_RFC3339_UTC: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z\Z")
# Lambda actions carry their API version: `UpdateFunctionCode20150331v2`.
_API_VERSION: Final = re.compile(r"^(?P<action>[A-Za-z]+?)20\d{6}(?:v\d+)?$")
# An instance-profile session is named after its instance.
_INSTANCE: Final = re.compile(r"^i-[0-9A-Fa-f]{8,17}$")
# OIDC providers of build systems: a role assumed with their tokens is a CI identity.
_CI_PROVIDERS: Final = re.compile(
    r"token\.actions\.githubusercontent\.com|gitlab|circleci|buildkite|bitbucket|terraform",
    re.IGNORECASE,
)
# eventSource prefixes that differ from the IAM service prefix of their actions.
_IAM_PREFIX: Final = {"monitoring": "cloudwatch", "email": "ses"}
# requestParameters that name the object a call touched, in order of preference.
_RESOURCE_KEYS: Final = (
    "roleArn",
    "secretId",
    "policyArn",
    "functionName",
    "roleName",
    "userName",
    "groupName",
    "instanceId",
    "instanceIds",
    "name",
    "names",
    "trailName",
    "keyId",
    "parameterName",
    "logGroupName",
    "tableName",
    "queueUrl",
    "topicArn",
    "stackName",
    "clusterName",
    "repositoryName",
    "modelId",
    "snapshotId",
    "imageId",
    "dBSnapshotIdentifier",
    "dBInstanceIdentifier",
    "groupId",
    "documentName",
    "target",
)
_RESOURCE_RANK: Final = {name: rank for rank, name in enumerate(_RESOURCE_KEYS)}
_ISSUERS: Final = frozenset({"GetSessionToken", "GetFederationToken", "AssumeRoot"})
# Other calls whose response the mapping reads.
_READS_RESPONSE: Final = frozenset({"CreateAccessKey", "ConsoleLogin"})
# CloudTrail writes some response times as `Jul 30, 2024, 9:46:15 PM` (UTC).
_LOOSE_TIMES: Final = ("%b %d, %Y, %I:%M:%S %p", "%b %d, %Y %I:%M:%S %p")


class _Issuer(msgspec.Struct, gc=False):
    type: str | None = None
    arn: str | None = None
    userName: str | None = None  # noqa: N815 (CloudTrail's names)


class _SessionAttributes(msgspec.Struct, gc=False):
    creationDate: str | None = None  # noqa: N815
    mfaAuthenticated: str | bool | None = None  # noqa: N815


class _WebIdentity(msgspec.Struct, gc=False):
    federatedProvider: str | None = None  # noqa: N815


class _SessionContext(msgspec.Struct, gc=False):
    sessionIssuer: _Issuer | None = None  # noqa: N815
    attributes: _SessionAttributes | None = None
    webIdFederationData: _WebIdentity | None = None  # noqa: N815
    sourceIdentity: str | None = None  # noqa: N815
    ec2RoleDelivery: str | None = None  # noqa: N815


class _OnBehalfOf(msgspec.Struct, gc=False):
    userId: str | None = None  # noqa: N815


class _UserIdentity(msgspec.Struct, gc=False):
    type: str | None = None
    principalId: str | None = None  # noqa: N815
    arn: str | None = None
    accountId: str | None = None  # noqa: N815
    accessKeyId: str | None = None  # noqa: N815
    credentialId: str | None = None  # noqa: N815
    userName: str | None = None  # noqa: N815
    invokedBy: str | None = None  # noqa: N815
    identityProvider: str | None = None  # noqa: N815
    sessionContext: _SessionContext | None = None  # noqa: N815
    onBehalfOf: _OnBehalfOf | None = None  # noqa: N815


class _Resource(msgspec.Struct, gc=False):
    ARN: str | None = None


class Record(msgspec.Struct, gc=False):
    """The parts of a CloudTrail record the mapping reads; every other field is ignored."""

    eventID: str | None = None  # noqa: N815
    eventTime: str | None = None  # noqa: N815
    eventSource: str | None = None  # noqa: N815
    eventName: str | None = None  # noqa: N815
    eventType: str | None = None  # noqa: N815
    userIdentity: _UserIdentity | None = None  # noqa: N815
    awsRegion: str | None = None  # noqa: N815
    recipientAccountId: str | None = None  # noqa: N815
    sourceIPAddress: str | None = None  # noqa: N815
    userAgent: str | None = None  # noqa: N815
    errorCode: str | None = None  # noqa: N815
    errorMessage: str | None = None  # noqa: N815
    requestID: str | None = None  # noqa: N815
    readOnly: bool | str | None = None  # noqa: N815
    sessionCredentialFromConsole: bool | str | None = None  # noqa: N815
    vpcEndpointId: str | None = None  # noqa: N815
    requestParameters: msgspec.Raw = msgspec.Raw()  # noqa: N815
    # Read only for the few calls that need it (issued credentials, console sign-in).
    responseElements: msgspec.Raw = msgspec.Raw()  # noqa: N815
    resources: list[_Resource] | None = None
    # Containers: an S3 delivery document, an EventBridge event.
    Records: list[msgspec.Raw] | None = None
    detail: msgspec.Raw = msgspec.Raw()


class Event(msgspec.Struct, omit_defaults=True, gc=False):
    """One record as a contract event, fields in the order the JSON has them (None: left out).

    A Struct rather than a dict: built in one call and encoded in C with its keys pre-encoded.
    """

    event_id: str
    ts: str | datetime
    token_id: str
    identity: str
    source: str
    target: str
    operation: str
    scope: str
    outcome: str
    identity_kind: str
    attributes: dict[str, Any]
    environment: str | None = None
    resource: str | None = None
    source_ip: str | None = None
    user_agent: str | None = None
    actor: str | None = None
    token: dict[str, Any] | None = None


_decode_top: Final = msgspec.json.Decoder(Record | list[msgspec.Raw]).decode
_decode_record: Final = msgspec.json.Decoder(Record).decode
_decode_any: Final = msgspec.json.Decoder().decode
_decode_parameters: Final = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


def adapt(record: bytes, settings: AdapterSettings) -> list[Item]:
    """The events in one input record (a record, `{"Records": [...]}`, an array, EventBridge)."""
    try:
        top = _decode_top(record)
    except DECODE_ERRORS as exc:
        raise InvalidEventError(f"{NAME}: {why(exc)}") from None
    if isinstance(top, list):
        return [_item(bytes(raw), settings, f"[{n}]") for n, raw in enumerate(top)]
    if top.Records is not None:
        return [_item(bytes(raw), settings, f"Records[{n}]") for n, raw in enumerate(top.Records)]
    if len(top.detail) and top.eventID is None:
        return [_item(record, settings, "detail", bytes(top.detail))]
    return [_mapped(top, record, settings, "")]


def _item(source: bytes, settings: AdapterSettings, where: str, raw: bytes | None = None) -> Item:
    try:
        rec = _decode_record(source if raw is None else raw)
    except DECODE_ERRORS as exc:
        return Unmapped(source, f"{NAME}: {where}: {why(exc)}")
    return _mapped(rec, source, settings, where)


def _mapped(rec: Record, source: bytes, settings: AdapterSettings, where: str) -> Item:
    try:
        event, flags = event_of(rec, settings)
    except InvalidEventError as exc:
        reason = exc.reason if not where else exc.reason.replace(": ", f": {where}: ", 1)
        return Unmapped(source, reason)
    return Mapped(encode(event), source, flags)


def event_of(rec: Record, settings: AdapterSettings) -> tuple[Event, tuple[str, ...]]:
    """One CloudTrail record as a contract event and the adapter's flags."""
    if rec.eventType == "AwsCloudTrailInsight":
        raise InvalidEventError(f"{NAME}: an Insights event reports a trend, not an API call")
    event_id = _required(rec.eventID, "eventID")
    ts = _time(_required(rec.eventTime, "eventTime"), "eventTime")
    service = _required(rec.eventSource, "eventSource")
    name = _required(rec.eventName, "eventName")
    who = rec.userIdentity
    if who is None:
        raise InvalidEventError(f"{NAME}: record has no `userIdentity`")
    flags: tuple[str, ...] = ()
    principal = _principal(who)
    if principal is None:
        principal = "aws:unknown-principal"
        flags += (FLAG_IDENTITY_FALLBACK,)
    key = who.accessKeyId or who.credentialId or None
    if key is None:
        token_id = f"aws-principal:{stable_hash(principal)}"
        flags += (FLAG_TOKEN_FALLBACK,)
    else:
        token_id = key
    action = _action(service, name)
    address = rec.sourceIPAddress or None
    is_ip = address is not None and _is_ip(address)
    context = who.sessionContext
    issuer = context.sessionIssuer.arn if context and context.sessionIssuer else None
    response = _response(rec) if rec.errorCode is None else None
    resource, resources = _resource(rec)
    attributes = _attributes(rec, who, issuer, resources, None if is_ip else address, action)
    if response is not None:
        issued = _issued_token(rec, who, name, response, principal, ts)
        if issued is not None:
            attributes["issued_token"] = issued
    account = rec.recipientAccountId or who.accountId
    event = Event(
        event_id,
        ts,
        token_id,
        principal,
        address if address and not is_ip else _short_name(principal),
        service,
        action,
        action,
        _outcome(rec, response),
        _identity_kind(rec, who),
        attributes,
        settings.aws_account_environments.get(account, account) if account else None,
        resource or None,
        address if is_ip else None,
        clip(rec.userAgent, 4096) if rec.userAgent else None,
        _actor(who, issuer) or None,
        _token_meta(key, context),
    )
    return event, flags


def _required(value: str | None, field: str) -> str:
    if not value:
        raise InvalidEventError(f"{NAME}: record has no `{field}`")
    return value


def _time(text: str, field: str) -> str | datetime:
    if _RFC3339_UTC.match(text):
        return text  # already what the contract takes (validated on decode)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEventError(f"{NAME}: `{field}` {text!r} is not an ISO 8601 time") from None
    # CloudTrail times are UTC; a shipper that dropped the `Z` did not move the clock.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _loose_time(text: object) -> datetime | None:
    """A time from a response element, in ISO 8601 or CloudTrail's `Jul 30, 2024, 9:46:15 PM`."""
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        for layout in _LOOSE_TIMES:
            try:
                value = datetime.strptime(text, layout)
                break
            except ValueError:
                continue
        else:
            return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _principal(who: _UserIdentity) -> str | None:
    """The principal that made the call: its ARN (a role session's own ARN), else the best name."""
    if who.arn:
        return who.arn
    if who.type == "AWSService" and who.invokedBy:
        return who.invokedBy
    if who.type in ("SAMLUser", "WebIdentityUser") and who.userName:
        provider = who.identityProvider
        return f"{provider}:{who.userName}" if provider else who.userName
    if who.onBehalfOf is not None and who.onBehalfOf.userId:
        return f"identitycenter:{who.onBehalfOf.userId}"
    if who.accountId == "ANONYMOUS_PRINCIPAL":
        return "aws:anonymous"
    if who.principalId:
        return f"{who.accountId}:{who.principalId}" if who.accountId else who.principalId
    if who.invokedBy:
        return who.invokedBy
    if who.accountId:
        return f"arn:aws:iam::{who.accountId}:root"
    return None


@lru_cache(maxsize=4096)
def _is_ip(address: str) -> bool:
    return _IP.match(address) is not None


@lru_cache(maxsize=4096)
def _short_name(principal: str) -> str:
    """`alice` for a user ARN, `ROLE/SESSION` for a role session, else the principal itself."""
    if not principal.startswith("arn:"):
        return principal
    path = principal.split(":", 5)[-1]
    kind, _, rest = path.partition("/")
    if kind == "assumed-role":
        return rest or path
    if kind in ("user", "federated-user", "role"):
        return rest.rsplit("/", 1)[-1] or path
    return path


@lru_cache(maxsize=4096)
def _action(service: str, name: str) -> str:
    """`sts:AssumeRole`: the IAM action, from the service host and the event name."""
    prefix = service.split(".", 1)[0]
    prefix = _IAM_PREFIX.get(prefix, prefix)
    versioned = _API_VERSION.match(name)
    return f"{prefix}:{versioned['action'] if versioned else name}"


def _response(rec: Record) -> dict[str, Any] | None:
    raw = rec.responseElements
    if not len(raw) or rec.eventName is None:
        return None
    name = rec.eventName
    if not (name.startswith("AssumeRole") or name in _ISSUERS or name in _READS_RESPONSE):
        return None
    try:
        value = _decode_any(raw)
    except DECODE_ERRORS:
        return None
    return value if isinstance(value, dict) else None


def _outcome(rec: Record, response: dict[str, Any] | None) -> str:
    if rec.errorCode:
        return "denied" if _DENIED.search(rec.errorCode) else "error"
    if response is not None and response.get("ConsoleLogin") == "Failure":
        return "denied"
    return "success"


def _identity_kind(rec: Record, who: _UserIdentity) -> str:
    """Set only on evidence in the record: an IAM user may be a person or a program."""
    kind = who.type
    context = who.sessionContext
    if kind in ("Root", "SAMLUser", "IdentityCenterUser") or rec.eventType == "AwsConsoleSignIn":
        return "user"
    if str(rec.sessionCredentialFromConsole).lower() == "true":
        return "user"
    if kind == "AWSService":
        return "service"
    provider = who.identityProvider
    if context is not None and context.webIdFederationData is not None:
        provider = context.webIdFederationData.federatedProvider or provider
    if provider and _CI_PROVIDERS.search(provider):
        return "ci"
    if context is not None:
        issuer = context.sessionIssuer.arn if context.sessionIssuer else None
        if issuer and "/aws-reserved/sso.amazonaws.com/" in issuer:
            return "user"
        session = who.arn.rsplit("/", 1)[-1] if who.arn else ""
        if context.ec2RoleDelivery or _INSTANCE.match(session):
            return "service"
    return "unknown"


def _actor(who: _UserIdentity, issuer: str | None) -> str | None:
    """On whose behalf: the session's source identity, the Identity Center user, or its issuer."""
    context = who.sessionContext
    if context is not None and context.sourceIdentity:
        return clip(context.sourceIdentity, 4096)
    if who.onBehalfOf is not None and who.onBehalfOf.userId:
        return who.onBehalfOf.userId
    return clip(issuer, 4096) if issuer else None


def _token_meta(key: str | None, context: _SessionContext | None) -> dict[str, Any] | None:
    """What the key itself says: a long-term key (`AKIA`) or a session (`ASIA`) and its start."""
    if key is None:
        return None
    if key.startswith("AKIA"):
        return {"kind": "aws:access-key"}
    if key.startswith("ASIA"):
        created = context.attributes.creationDate if context and context.attributes else None
        issued = _loose_time(created)
        return {"kind": "aws:session", "issued_at": issued} if issued else {"kind": "aws:session"}
    return None


def _resource(rec: Record) -> tuple[str | None, list[str] | None]:
    """The object touched (first resource ARN, else a naming request parameter) and all ARNs."""
    if rec.resources:
        arns = [r.ARN for r in rec.resources if r.ARN]
        if arns:
            return arns[0], arns if len(arns) > 1 else None
    raw = rec.requestParameters
    if not len(raw):
        return None, None
    try:
        params = _decode_parameters(raw)
    except DECODE_ERRORS:
        return None, None
    if "bucketName" in params:
        bucket, key = _string(params["bucketName"]), _string(params.get("key"))
        if bucket:
            return (f"{bucket}/{key}" if key else bucket), None
    ranked = [(_RESOURCE_RANK[k], k) for k in params if k in _RESOURCE_RANK]
    for _, name in sorted(ranked):
        value = _string(params[name])
        if value:
            return value, None
    return None, None


def _string(raw: msgspec.Raw | None) -> str | None:
    """A request parameter's text: a string, or the first string of a list."""
    if raw is None:
        return None
    try:
        value = _decode_any(raw)
    except DECODE_ERRORS:
        return None
    if isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) and value else None


def _issued_token(
    rec: Record,
    who: _UserIdentity,
    name: str,
    response: dict[str, Any],
    caller: str,
    ts: str | datetime,
) -> dict[str, Any] | None:
    """The credential a call issued, as the registry should record it (parent: the caller's)."""
    if who.type == "AWSService":
        # Credentials AWS hands out on its own (instance profiles, service roles) have no parent.
        return None
    if name == "CreateAccessKey":
        created = response.get("accessKey")
        if not isinstance(created, dict) or not isinstance(created.get("accessKeyId"), str):
            return None
        user = created.get("userName")
        if not isinstance(user, str) or user == who.userName:
            identity = caller
        else:
            identity = f"arn:aws:iam::{rec.recipientAccountId or who.accountId}:user/{user}"
        return {
            "token_id": created["accessKeyId"],
            "kind": "aws:access-key",
            "identity": identity,
            "issued_at": _loose_time(created.get("createDate")) or ts,
        }
    credentials = response.get("credentials")
    if not isinstance(credentials, dict) or not isinstance(credentials.get("accessKeyId"), str):
        return None
    holder: str | None = caller if name == "GetSessionToken" else None
    for element in ("assumedRoleUser", "federatedUser"):
        value = response.get(element)
        if isinstance(value, dict) and isinstance(value.get("arn"), str):
            holder = value["arn"]
    issued: dict[str, Any] = {
        "token_id": credentials["accessKeyId"],
        "kind": "aws:session",
        "issued_at": ts,
    }
    if holder:
        issued["identity"] = holder
    expires = _loose_time(credentials.get("expiration"))
    if expires:
        issued["expires_at"] = expires
    return issued


def _attributes(
    rec: Record,
    who: _UserIdentity,
    issuer: str | None,
    resources: list[str] | None,
    address: str | None,
    action: str,
) -> dict[str, Any]:
    """What the event keeps in `attributes` (`cloud.*` named as OpenTelemetry names them)."""
    values: dict[str, Any] = {"cloud.provider": "aws"}
    if rec.recipientAccountId:
        values["cloud.account.id"] = rec.recipientAccountId
    if rec.awsRegion:
        values["cloud.region"] = rec.awsRegion
    name = rec.eventName or ""
    if not action.endswith(name):
        values["aws.event_name"] = name
    if rec.eventType:
        values["aws.event_type"] = rec.eventType
    if rec.requestID:
        values["aws.request_id"] = rec.requestID
    if rec.readOnly is not None:
        values["aws.read_only"] = rec.readOnly
    if who.type:
        values["aws.principal_type"] = who.type
    if who.principalId:
        values["aws.principal_id"] = who.principalId
    if who.accountId and who.accountId != rec.recipientAccountId:
        values["aws.caller_account_id"] = who.accountId
    if issuer:
        values["aws.session_issuer"] = issuer
    context = who.sessionContext
    if context is not None:
        if context.attributes is not None and context.attributes.mfaAuthenticated is not None:
            values["aws.mfa_authenticated"] = context.attributes.mfaAuthenticated
        federation = context.webIdFederationData
        if federation is not None and federation.federatedProvider:
            values["aws.web_identity_provider"] = federation.federatedProvider
    if who.identityProvider:
        values.setdefault("aws.web_identity_provider", who.identityProvider)
    if who.invokedBy:
        values["aws.invoked_by"] = who.invokedBy
    if address:
        values["aws.source_address"] = address
    if rec.vpcEndpointId:
        values["aws.vpc_endpoint_id"] = rec.vpcEndpointId
    if rec.errorCode:
        values["aws.error_code"] = rec.errorCode
    if rec.errorMessage:
        values["aws.error_message"] = clip(rec.errorMessage, 1024)
    if resources:
        values["aws.resources"] = resources
    return values
