// {{name}}: an Astrid plugin in JavaScript (componentize-js, StarlingMonkey).
//
//     {{name}}.ping   -> {"text":"pong","plugin":"{{name}}","echo":PAYLOAD} on agent.response
//
// The Host ABI is imported as ES modules named after the WIT interfaces.
// componentize-js follows jco's conventions for `result`: a host call that
// fails throws, and a throw out of an export is its err (which the kernel
// logs; the plugin keeps serving).
//
// Build:   python -m astrid_runtime.scaffold.build path/to/{{name}}
// Install: astrid plugin install path/to/{{name}}
import { publish, subscribe } from "astrid:kernel/bus@0.1.0";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function respond(text, fields = {}) {
  const reply = { text, plugin: "{{name}}", ...fields };
  publish("agent.response", encoder.encode(JSON.stringify(reply)));
}

export function init(config) {
  subscribe("{{name}}.>");
}

export function onMessage(topic, payload) {
  if (topic === "{{name}}.ping") {
    respond("pong", { echo: decoder.decode(payload) });
  }
}
