"""{{name}}: an Astrid plugin (Python, built with componentize-py).

    {{name}}.ping        -> "pong" on agent.response
    {{name}}.count       -> how many times it was called (kept in kv)

Build:   scripts/build-plugins.sh path/to/{{name}}
Install: astrid plugin install path/to/{{name}}
"""

from __future__ import annotations

from astrid_sdk import Message, Plugin, kv, log

plugin = Plugin("{{name}}")


@plugin.on_init
def ready(config: str) -> None:
    log.info("{{name}} ready", config=config)


@plugin.on("{{name}}.ping")
def ping(msg: Message) -> None:
    plugin.respond("pong", echo=msg.text)


@plugin.on("{{name}}.count")
def count(msg: Message) -> None:
    calls = int(kv.get_json("calls", 0)) + 1
    kv.set("calls", calls)
    plugin.respond(f"called {calls} time(s)", calls=calls)


# componentize-py exports this class: keep it last.
WitWorld = plugin.world()
