"""Capability approvals: policy file, tokens, the pipeline, audit lines, and the
kernel's token-checked commit path (astrid_runtime/approval/, commit_service.py).

Expiry is tested with tokens issued in the past (`now=`), never by waiting.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from astrid_runtime.approval.asks import Answer
from astrid_runtime.approval.audit import AuditLog
from astrid_runtime.approval.pipeline import Action, ApprovalPipeline
from astrid_runtime.approval.policy import Policy, PolicyError, load_policy
from astrid_runtime.approval.token import KEY_FILE, TokenIssuer, load_or_create_key, now_ms
from astrid_runtime.bus import Bus, Message, Tap
from astrid_runtime.commit_service import CommitService, commit_resource, parse_request
from astrid_runtime.errors import KernelError, Refusal

POLICY = """\
default = "deny"
token_ttl_s = 120

[[rule]]
plugin = "filetool"
kind = "fs.commit"
resource = "workspace/docs/*"
decision = "allow"
ttl_s = 30

[[rule]]
kind = "net.http"
resource = "https://internal.example/*"
decision = "deny"
reason = "internal hosts are off limits"

[[rule]]
kind = "net.*"
decision = "ask"
"""


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return load_policy(path)


@pytest.fixture
def pipeline(tmp_path: Path, policy: Policy) -> ApprovalPipeline:
    return ApprovalPipeline(TokenIssuer(b"k" * 32), AuditLog(tmp_path / "audit.jsonl"), policy)


def _denied(fn: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(Refusal) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    assert info.value.kind == "denied", info.value.message
    return info.value.message


def _audit(pipeline: ApprovalPipeline) -> list[dict[str, object]]:
    assert pipeline.audit.path is not None
    return [json.loads(line) for line in pipeline.audit.path.read_text().splitlines()]


# -- policy ------------------------------------------------------------------------

def test_policy_first_match_wins(policy: Policy) -> None:
    assert policy.decide("filetool", "fs.commit", "workspace/docs/a.md").decision == "allow"
    assert policy.decide("filetool", "fs.commit", "workspace/docs/a.md").ttl_s == 30
    assert policy.decide("other", "fs.commit", "workspace/docs/a.md").decision == "deny"
    assert policy.decide("x", "net.http", "https://internal.example/a").decision == "deny"
    assert policy.decide("x", "net.http", "https://example.org/").decision == "ask"
    fallback = policy.decide("x", "spend.usd", "1")
    assert fallback.decision == "deny" and fallback.rule.label == "default"


@pytest.mark.parametrize(("text", "where"), [
    ('default = "maybe"\n', ":1: default: must be one of"),
    ('[[rule]]\nkind = "a"\ndecision = "allow"\n\n[[rule]]\nkind = "b"\ndecision = "nah"\n',
     ":7: decision: must be one of"),
    ('[[rule]]\nkind = "a"\n', "rule 1: missing required key 'decision'"),
    ('[[rule]]\nkind = "a"\ndecision = "allow"\ncolour = "red"\n', ":4: unknown key 'colour'"),
    ("token_ttl_s = -1\n", ":1: token_ttl_s"),
    ("default = \n", "policy.toml"),
])
def test_bad_policy_names_the_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert where in str(info.value), str(info.value)


# -- tokens ------------------------------------------------------------------------

def test_token_scope_expiry_forgery_and_replay() -> None:
    issuer = TokenIssuer(b"k" * 32)
    token = issuer.issue("filetool", "fs.commit", "workspace/a", ttl_s=60).token
    scope: dict[str, Any] = dict(plugin="filetool", kind="fs.commit", resource="workspace/a")
    assert issuer.check(token, **scope).resource == "workspace/a"
    assert "resource 'workspace/a', not 'workspace/b'" in _denied(
        issuer.check, token, **{**scope, "resource": "workspace/b"})
    assert "issued to 'filetool'" in _denied(issuer.check, token, **{**scope, "plugin": "x"})
    assert "is for 'fs.commit'" in _denied(issuer.check, token, **{**scope, "kind": "net.http"})
    old = issuer.issue("filetool", "fs.commit", "workspace/a", ttl_s=1, now=now_ms() - 10_000)
    assert "expired" in _denied(issuer.check, old.token, **scope)
    assert "signature" in _denied(TokenIssuer(b"j" * 32).check, token, **scope)
    head, _payload, mac = token.split(".")
    forged = json.dumps({"p": "filetool", "k": "fs.commit", "r": "workspace", "exp": 2**60,
                         "n": "x"}).encode()
    tampered = f"{head}.{base64.urlsafe_b64encode(forged).decode().rstrip('=')}.{mac}"
    assert "signature" in _denied(issuer.check, tampered, **scope)
    assert "malformed" in _denied(issuer.check, "nonsense", **scope)
    issuer.check(token, **scope, consume=True)
    assert "already used" in _denied(issuer.check, token, **scope, consume=True)


def test_tokens_are_ed25519_signed_and_verifiable_by_another_kernel() -> None:
    """Issue 12: capability tokens another kernel can verify with the issuer's public key."""
    from astrid_runtime.approval.token import verify_token

    issuer = TokenIssuer(b"k" * 32)
    token = issuer.issue("filetool", "fs.commit", "workspace/a", ttl_s=60)
    assert token.token.startswith("v2.") and token.kernel == issuer.identity.kernel_id
    scope: dict[str, Any] = dict(plugin="filetool", kind="fs.commit", resource="workspace/a")
    public = issuer.identity.public_key  # all another kernel needs: no shared secret
    assert verify_token(token.token, public, **scope).nonce == token.nonce
    other = TokenIssuer(b"j" * 32).identity.public_key
    assert "signature" in _denied(verify_token, token.token, other, **scope)


def test_glob_scoped_and_reusable_tokens() -> None:
    issuer = TokenIssuer(b"k" * 32)
    docs = issuer.issue("filetool", "fs.commit", "workspace/docs/*", ttl_s=60, glob=True,
                        single_use=False).token
    scope: dict[str, Any] = dict(plugin="filetool", kind="fs.commit")
    for _ in range(2):  # reusable until it expires
        issuer.check(docs, **scope, resource="workspace/docs/a/b.md", consume=True)
    assert "not 'workspace/src/x.py'" in _denied(issuer.check, docs, **scope,
                                                 resource="workspace/src/x.py")
    exact = issuer.issue("filetool", "fs.commit", "workspace/[ab].md", ttl_s=60).token
    assert "not 'workspace/a.md'" in _denied(issuer.check, exact, **scope,
                                             resource="workspace/a.md")  # no glob: literal
    issuer.check(exact, **scope, resource="workspace/[ab].md", consume=True)
    assert "already used" in _denied(issuer.check, exact, **scope,
                                     resource="workspace/[ab].md", consume=True)


def test_kernel_key_is_created_0600_and_kept(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    assert len(key) == 32
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert load_or_create_key(tmp_path) == key
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(KernelError, match="accessible to others"):
        load_or_create_key(tmp_path)


# -- the pipeline -------------------------------------------------------------------

def test_pipeline_decisions_are_audited(pipeline: ApprovalPipeline) -> None:
    granted = ("fs.commit", "net.http")
    token = pipeline.request(Action("filetool", "fs.commit", "workspace/docs/a.md"), granted)
    assert token.expires_at_ms > now_ms()
    assert "not in the plugin's cap grant" in _denied(
        pipeline.request, Action("filetool", "spend.usd", "5"), granted)
    assert "internal hosts are off limits" in _denied(
        pipeline.request, Action("filetool", "net.http", "https://internal.example/x"), granted)
    assert "no approver is wired in" in _denied(
        pipeline.request, Action("filetool", "net.http", "https://example.org/"), granted)
    with pytest.raises(Refusal) as info:
        pipeline.request(Action("filetool", "", "x"), granted)
    assert info.value.kind == "invalid"
    lines = _audit(pipeline)
    assert [(e["decision"], e["stage"]) for e in lines] == [
        ("allow", "policy"), ("deny", "grant"), ("deny", "policy"), ("deny", "approval")]
    assert lines[0]["token"] == token.nonce and lines[2]["rule"] == "rule 2"


def test_check_token_is_audited_and_single_use(pipeline: ApprovalPipeline) -> None:
    token = pipeline.request(Action("filetool", "fs.commit", "workspace/docs/a.md"),
                             ("fs.commit",))
    scope: dict[str, Any] = dict(plugin="filetool", kind="fs.commit",
                                 resource="workspace/docs/a.md")
    _denied(pipeline.check_token, token.token, **{**scope, "resource": "workspace"})
    pipeline.check_token(token.token, **scope)
    assert "already used" in _denied(pipeline.check_token, token.token, **scope)
    checks = [e for e in _audit(pipeline) if e["event"] == "cap.check"]
    assert [e["ok"] for e in checks] == [False, True, False]


class _Stage:
    name = "urls"

    def check(self, action: Action) -> tuple[str, str]:
        return ("deny", "blocked host") if "evil" in action.resource else ("allow", "")


def test_interceptors_and_approvers_slot_in(tmp_path: Path, policy: Policy) -> None:
    class Yes:
        def ask(self, action: Action, reason: str, rule: str) -> tuple[str, Answer]:
            return "a1", Answer("once", "test")

    pipeline = ApprovalPipeline(TokenIssuer(b"k" * 32), AuditLog(None), policy,
                                interceptors=[_Stage()], approver=Yes())
    assert "blocked host" in _denied(
        pipeline.request, Action("p", "net.http", "https://evil.example/"), ("net.http",))
    token = pipeline.request(Action("p", "net.http", "https://example.org/"), ("net.http",))
    assert token.kind == "net.http"
    assert pipeline.audit.lines[-1]["stage"] == "approval"


# -- the kernel's commit path ---------------------------------------------------------

def test_commit_request_parsing() -> None:
    assert commit_resource([]) == "workspace"
    assert commit_resource(["b", "a/x"]) == "workspace/a/x,b"
    req = parse_request(b'{"token": "t", "paths": ["./a//b"], "in_reply_to": 3}')
    assert req.clean == ["a/b"] and req.reply == {"in_reply_to": 3}
    for bad in (b"nope", b'{"paths": []}', b'{"token": "t", "paths": ["../x"]}',
                b'{"token": "t", "paths": ["/etc"]}', b'{"token": "t", "paths": [1]}'):
        with pytest.raises(Refusal):
            parse_request(bad)


async def test_commit_service_refuses_bad_tokens_without_committing(
        pipeline: ApprovalPipeline, tmp_path: Path) -> None:
    marker = tmp_path / "committed"
    # A stand-in for `astrid-fs` that records being run: the service must never get there.
    service = CommitService(Bus(), pipeline, "s1",
                            astrid_fs=("sh", "-c", f"touch {marker}", "astrid-fs"))
    tap = Tap(service.bus, "agent.response")
    good = pipeline.request(Action("filetool", "fs.commit", "workspace/docs/a.md"),
                            ("fs.commit",))
    expired = pipeline.tokens.issue("filetool", "fs.commit", "workspace/docs/a.md", 1,
                                    now=now_ms() - 5_000)
    cases = [
        ("client", {"token": good.token, "paths": ["docs/a.md"]}, "issued to 'filetool'"),
        ("filetool", {"token": good.token, "paths": ["docs/b.md"]}, "not 'workspace/docs/b.md'"),
        ("filetool", {"token": good.token, "paths": []}, "not 'workspace'"),
        ("filetool", {"token": expired.token, "paths": ["docs/a.md"]}, "expired"),
        ("filetool", {"token": good.token, "paths": ["../up"]}, "cannot climb out"),
    ]
    for publisher, body, why in cases:
        await service.handle(Message("kernel.fs.commit", json.dumps(body).encode(), publisher))
        with trio.fail_after(5):
            reply = json.loads((await tap.receive()).payload)
        assert reply["ok"] is False and why in reply["text"], (why, reply)
    assert not marker.exists()
    await service.handle(Message("kernel.fs.commit", json.dumps(
        {"token": good.token, "paths": ["docs/a.md"]}).encode(), "filetool"))
    with trio.fail_after(5):
        reply = json.loads((await tap.receive()).payload)
    assert reply["ok"] is True and marker.exists()
    # ... and the same token a second time is a replay.
    await service.handle(Message("kernel.fs.commit", json.dumps(
        {"token": good.token, "paths": ["docs/a.md"]}).encode(), "filetool"))
    with trio.fail_after(5):
        reply = json.loads((await tap.receive()).payload)
    assert reply["ok"] is False and "already used" in reply["text"]
    commits = [e for e in _audit(pipeline) if e["event"] == "fs.commit"]
    assert [e["ok"] for e in commits] == [False] * 5 + [True, False]
