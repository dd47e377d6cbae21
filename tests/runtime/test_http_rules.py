"""The pure rules behind outbound HTTP: host grants, kernel secrets, the SSE assembly
the provider plugin runs, and the WIT copy the provider builds against."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from astrid_runtime.errors import ConfigError, Refusal
from astrid_runtime.net.hosts import allowed, host_globs, parse_url
from astrid_runtime.net.secrets import load_secrets

ROOT = Path(__file__).resolve().parents[2]


def test_host_globs_come_from_net_http_cap_entries_only() -> None:
    grants = ("fs.commit", "net.http", "net.http:127.0.0.1:*", "net.http:API.openai.com")
    assert host_globs(grants) == ("127.0.0.1:*", "api.openai.com")


@pytest.mark.parametrize(("url", "ok"), [
    ("http://127.0.0.1:11434/v1/chat/completions", True),
    ("https://api.openai.com/v1/chat/completions", True),
    ("https://API.OpenAI.com:443/v1", True),
    ("https://api.openai.com:8443/v1", False),   # a bare host means the default port
    ("http://127.0.0.2:11434/v1", False),
    ("https://api.openai.com.evil.example/v1", False),
])
def test_a_url_is_allowed_only_by_a_matching_glob(url: str, ok: bool) -> None:
    assert allowed(("127.0.0.1:*", "api.openai.com"), parse_url(url)) is ok


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y", "http:///nohost",
                                 "http://user:pw@127.0.0.1/", "http://[::1"])
def test_urls_the_kernel_will_not_fetch_are_invalid(url: str) -> None:
    with pytest.raises(Refusal) as caught:
        parse_url(url)
    assert caught.value.kind == "invalid"


def test_secrets_file_values_from_env_and_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text('[[secret]]\nname = "k"\nhosts = ["api.openai.com"]\n'
                    'plugins = ["llm-*"]\nenv = "KEY_VAR"\n')
    [secret] = load_secrets(path, {"KEY_VAR": "abc"}).entries
    assert (secret.header, secret.value) == ("Authorization", "Bearer abc")
    assert "abc" not in repr(secret)
    target = parse_url("https://api.openai.com/v1")
    assert secret.applies("llm-openai", target) and not secret.applies("notes", target)
    with pytest.raises(ConfigError, match="KEY_VAR is not set"):
        load_secrets(path, {})
    path.write_text('[[secret]]\nname = "k"\nhosts = ["h"]\nvalue = "v"\nenv = "E"\n')
    with pytest.raises(ConfigError, match=r"secrets.toml:1: secret k: give exactly one"):
        load_secrets(path, {})
    assert load_secrets(tmp_path / "absent.toml").entries == ()


def test_the_provider_builds_against_the_kernels_http_wit() -> None:
    vendored = ROOT / "plugins" / "llm-openai" / "wit" / "deps" / "kernel" / "http.wit"
    assert vendored.read_text() == (ROOT / "astrid_runtime" / "wit" / "net" / "http.wit"
                                    ).read_text()


def test_streamed_tool_call_fragments_are_put_back_together() -> None:
    spec = importlib.util.spec_from_file_location(
        "llm_openai_sse", ROOT / "plugins" / "llm-openai" / "sse.py")
    assert spec is not None and spec.loader is not None
    sse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sse)

    def event(delta: dict[str, object]) -> bytes:
        return b"data: " + json.dumps({"choices": [{"delta": delta}]}).encode() + b"\r\n\r\n"

    stream = (event({"content": "Let me "}) + event({"content": "write it."})
              + event({"tool_calls": [{"index": 0, "id": "c1", "function":
                                       {"name": "fs", "arguments": '{"comm'}}]})
              + event({"tool_calls": [{"index": 0, "function": {"arguments": 'and": "ls"}'}}]})
              + b"data: [DONE]\n\n")
    completion = sse.Completion()
    texts = []
    rest = b""
    for i in range(0, len(stream), 7):  # arbitrary cuts, as TCP delivers them
        events, rest = sse.parse_events(rest + stream[i:i + 7])
        texts.append(completion.feed(events))
    assert rest == b"" and completion.done
    assert "".join(texts) == "Let me write it."
    assert completion.message() == {
        "role": "assistant", "content": "Let me write it.",
        "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "fs", "arguments": '{"command": "ls"}'}}]}
