"""Raw secrets sent in events never reach the DuckDB file, nor its write-ahead log.

Secrets go in as `token_id`, as `token.parent_token_id`, inside `attributes` (nested, in lists,
behind `Bearer `) and under sensitive names (`authorization`, `password`, `api_key`) whatever they
look like. They are ingested with the real command into a real file, which is then closed and read
as bytes: no secret may appear, in any table (checked by SQL too, as DuckDB compresses strings).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
from factories import call, write_events

TOKENTRAIL = str(Path(sys.executable).parent / "tokentrail")

# Every shape the redactor claims (tokentrail/events.py `_PREFIXED_SHAPES`), each one unique.
SHAPED = {
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudC03In0.S1gnatureSecretPart1234",
    "github": "ghp_" + "Q7wErTy9UiOp1AsDfGh2JkLzXcVbNm3456",
    "github_pat": "github_pat_11ABCDEFG0" + "x9Y8z7W6v5U4t3S2r1Q0",
    "openai": "sk-proj-" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2",
    "slack": "xoxb-1234567890-0987654321-SlackSecretValue",
    "gitlab": "glpat-" + "GitLabSecret12345678",
    "stripe": "sk_live_" + "StripeSecret1234567890",
    "aws_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY1",
    "aws_pair": "AKIAQWERTYUIOPASDFGH:" + "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2Yz3+",
}
# Values with no shape at all: only their attribute name says they are secrets.
NAMED = {
    "authorization": "Basic dXNlcjpwYXNzLXVuaXF1ZS0xMjM0",
    "password": "correct-horse-battery-staple-77",
    "api_key": "plain-api-key-value-4242",
    "X-Api-Key": "another-plain-key-9191",
    "client_secret": "client-secret-value-5353",
    "Cookie": "session=cookie-secret-value-6464",
}
CONTROL = "marker-not-a-secret-8c1f"


def events() -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    for name, secret in SHAPED.items():
        found.append(call(event_id=f"tok-{name}", token_id=secret))
        found.append(call(event_id=f"parent-{name}", token={"parent_token_id": secret}))
        found.append(
            call(
                event_id=f"attr-{name}",
                attributes={
                    "note": CONTROL,
                    "headers": {"x-forwarded-auth": f"Bearer {secret}"},
                    "list": [1, {"deep": [secret]}],
                    "cmd": f"curl -H 'token: {secret}' https://api",
                },
            )
        )
        # Alone under an innocent name: nothing else in the attributes hints at a secret.
        found.append(call(event_id=f"plain-{name}", attributes={"value": secret}))
    found.append(call(event_id="named", attributes={"http": NAMED, "nested": {"db": NAMED}}))
    # A conflicting second copy (same id, other content) is dead-lettered: redacted as well.
    found.append(
        call(event_id="named", target="elsewhere", attributes={"password": NAMED["password"]})
    )
    return found


def ingest(source: Path, db: Path) -> subprocess.CompletedProcess[str]:
    """The real command, as an operator runs it."""
    result = subprocess.run(
        [TOKENTRAIL, "ingest", str(source), "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_no_secret_reaches_the_duckdb_file_or_its_wal(tmp_path: Path) -> None:
    source = write_events(tmp_path / "secrets.jsonl", events())
    db = tmp_path / "secrets.duckdb"
    result = ingest(source, db)
    assert f"{len(events())} records" in result.stderr

    with duckdb.connect(str(db), read_only=True) as conn:
        (stored,) = conn.execute("SELECT count(*) FROM events").fetchone() or (0,)
        (flagged,) = conn.execute(
            "SELECT count(*) FROM events WHERE list_contains(flags, 'attributes_redacted')"
        ).fetchone() or (0,)
        tables = [r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        everything = "\n".join(
            repr(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables
        )
    assert (stored, flagged) == (len(events()) - 1, 2 * len(SHAPED) + 1)
    assert CONTROL in everything  # the scan sees attribute values
    secrets = [*SHAPED.values(), *NAMED.values()]
    assert [s for s in secrets if s in everything] == []

    files = [p for p in tmp_path.iterdir() if p.name.startswith("secrets.duckdb")]
    assert db in files
    data = b"".join(p.read_bytes() for p in files)
    assert CONTROL.encode() in data  # the grep sees stored values in the file as written
    leaked = [s for s in secrets if s.encode() in data or s.split(":")[-1].encode() in data]
    assert leaked == []


def test_rejected_inputs_are_dead_lettered_with_their_secrets_hashed(tmp_path: Path) -> None:
    # Dead letters keep what arrived, for a fix and a replay: not the credentials it carried.
    missing = call(token_id=SHAPED["github"])
    del missing["identity"]
    unknown = call(outcome="maybe", attributes={"authorization": NAMED["authorization"]})
    lines = [
        json.dumps(missing).encode(),
        json.dumps(unknown).encode(),
        # Broken JSON: found as text, by shape and after a sensitive name.
        f'{{"token_id": "{SHAPED["jwt"]}", "password": "{NAMED["password"]}", "ts": '.encode(),
        b'{"token_id": "\xff\xfe ' + SHAPED["slack"].encode() + b'"}',  # not UTF-8 either
    ]
    source = tmp_path / "rejected.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    db = tmp_path / "rejected.duckdb"
    ingest(source, db)

    with duckdb.connect(str(db), read_only=True) as conn:
        letters = conn.execute("SELECT reason, raw FROM dead_letters ORDER BY position").fetchall()
    assert len(letters) == len(lines)
    assert all(reason.endswith("(secrets in raw hashed)") for reason, _ in letters)
    assert b"redacted:" in letters[2][1] and b"\xff\xfe" in letters[3][1]
    secrets = [SHAPED["github"], NAMED["authorization"], SHAPED["jwt"], NAMED["password"]]
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(db.name))
    raws = b"".join(raw for _, raw in letters)
    leaked = [s for s in [*secrets, SHAPED["slack"]] if s.encode() in data + raws]
    assert leaked == []
