"""The dashboard's page and script (static; every value is set with textContent)."""

PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Astrid</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;max-width:70em}
section{margin-bottom:1.5em} h2{font-size:1.1em;border-bottom:1px solid #ccc}
pre{background:#f6f6f6;padding:.5em;overflow:auto;max-height:25em}
.ask{border:1px solid #d90;padding:.5em;margin:.3em 0} button{margin-right:.4em}
#bus li{font-family:monospace;white-space:pre-wrap}
</style></head><body>
<h1>Astrid <span id="session"></span></h1>
<section><h2>Pending approvals</h2><div id="asks"><em>none</em></div>
<p id="answered"></p></section>
<section><h2>Sessions</h2><ul id="sessions"></ul><pre id="diff"></pre></section>
<section><h2>Plugins</h2><ul id="plugins"></ul></section>
<section><h2>Live bus</h2><ol id="bus" reversed></ol></section>
<script src="/app.js"></script></body></html>
"""

SCRIPT = b"""'use strict';
const $ = (id) => document.getElementById(id);
const el = (tag, text) => { const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text; return e; };
async function api(path, body) {
  const opts = body === undefined ? {} : {method: 'POST', body: JSON.stringify(body),
    headers: {'Content-Type': 'application/json', 'X-Astrid-Dashboard': '1'}};
  const r = await fetch(path, opts);
  const text = await r.text();
  if (!r.ok) throw new Error(text);
  return text;
}
async function answer(id, how) {
  try {
    const done = JSON.parse(await api('/api/approvals/' + encodeURIComponent(id), {answer: how}));
    $('answered').textContent = 'answered ' + done.id + ': ' + done.answer;
  } catch (e) { $('answered').textContent = 'not answered: ' + e.message; }
  refresh();
}
function showAsks(pending) {
  const box = $('asks'); box.replaceChildren();
  if (!pending.length) { box.appendChild(el('em', 'none')); return; }
  for (const ask of pending) {
    const d = el('div'); d.className = 'ask'; d.dataset.id = ask.id;
    d.appendChild(el('div', ask.plugin + ' asks ' + ask.kind + ' on ' + ask.resource +
                      (ask.reason ? ' (' + ask.reason + ')' : '')));
    for (const how of ['once', 'session', 'always', 'deny']) {
      const b = el('button', how === 'deny' ? 'Deny' : 'Approve ' + how);
      b.dataset.answer = how; b.onclick = () => answer(ask.id, how); d.appendChild(b);
    }
    box.appendChild(d);
  }
}
// One diff request at a time (each runs `astrid-fs diff`); a change meanwhile asks again.
let diffBusy = false, diffAgain = false;
async function showDiff(name) {
  $('diff').dataset.session = name;
  if (diffBusy) { diffAgain = true; return; }
  diffBusy = true;
  try { $('diff').textContent = await api('/api/diff?session=' + encodeURIComponent(name)); }
  catch (e) { $('diff').textContent = e.message; }
  finally {
    diffBusy = false;
    if (diffAgain) { diffAgain = false; showDiff($('diff').dataset.session); }
  }
}
async function refresh() {
  const state = JSON.parse(await api('/api/state'));
  $('session').textContent = state.session;
  showAsks(state.approvals.pending);
  const ul = $('sessions'); ul.replaceChildren();
  for (const s of state.sessions) {
    const li = el('li'); const a = el('a', s.name); a.href = '#'; a.dataset.session = s.name;
    a.onclick = (ev) => { ev.preventDefault(); showDiff(s.name); };
    li.appendChild(a); li.appendChild(el('span', ' over ' + s.lower)); ul.appendChild(li);
  }
  const pl = $('plugins'); pl.replaceChildren();
  for (const p of state.plugins) pl.appendChild(el('li', p.name + ': ' + p.state));
  document.body.dataset.ready = '1';
}
const bus = new EventSource('/api/bus');
bus.onmessage = (ev) => {
  const m = JSON.parse(ev.data);
  const li = el('li', m.topic + ' from ' + m.publisher + ': ' + m.payload);
  li.dataset.topic = m.topic; $('bus').prepend(li);
  while ($('bus').children.length > 200) $('bus').lastChild.remove();
  if (m.topic.startsWith('approval.')) refresh();
  // A tool's answer may follow an edit: show the session's diff as it is now.
  if (m.topic === 'agent.response' && $('diff').dataset.session)
    showDiff($('diff').dataset.session);
};
refresh().then(() => showDiff($('session').textContent));
"""
