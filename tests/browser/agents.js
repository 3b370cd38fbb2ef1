// Probe page for tests/e2e/test_browser_agents.py: the GA WebRTC flow of @openai/agents-realtime
// (OpenAIRealtimeWebRTC inside a RealtimeSession) against a Parley server on another origin.
// Bundled for the browser with esbuild (`npm run build:browser` in tests/node writes build/agents.js,
// which agents.html loads; the test does that itself); everything the test checks
// is reported in `window.probe`.
//
// URL parameters: base (the server, e.g. http://127.0.0.1:8123), and either
//   ek (an ephemeral key, ek_...) and message (sent once connected, default "ping"): connect and talk, or
//   mode=rest and key (an API key): only mint a key with a cross-origin POST /v1/realtime/client_secrets.
import { OpenAIRealtimeWebRTC, RealtimeAgent, RealtimeSession } from '@openai/agents-realtime';

const params = new URLSearchParams(location.search);
const probe = {
  loaded: true,
  status: 'loaded',
  connected: false,
  callId: null,
  history: [],
  events: [], // types of every server event the transport received
  errors: [],
  rest: null,
  audio: { energy: 0, packets: 0 },
};
window.probe = probe;

const $ = (id) => document.getElementById(id);
function show() {
  $('status').textContent = probe.status;
  $('call').textContent = probe.callId ?? '';
  $('events').textContent = probe.events.join(' ');
  $('errors').textContent = probe.errors.join('\n');
  $('audio').textContent = `remote audio energy ${probe.audio.energy.toFixed(4)}, ${probe.audio.packets} packets`;
  $('history').replaceChildren(...probe.history.map((item) => {
    const li = document.createElement('li');
    li.className = `${item.type} ${item.role ?? ''}`;
    li.textContent = `${item.role ?? item.type}: ${itemText(item)}`;
    return li;
  }));
}

function itemText(item) {
  return (item.content ?? []).map((c) => c.text ?? c.transcript ?? '').join(' ');
}

function describe(error) {
  const inner = error?.error ?? error;
  if (inner instanceof Error) return `${inner.name}: ${inner.message}`;
  if (inner?.error?.message) return `${inner.error.type ?? 'error'}: ${inner.error.message}`;
  try { return JSON.stringify(inner); } catch { return String(inner); }
}

function fail(error) {
  probe.errors.push(describe(error));
  console.error('probe error:', describe(error));
  show();
}

// A preflighted cross-origin request (Authorization + JSON body): the answer is readable only when
// Parley's CORS policy allows this page's origin.
async function restProbe(base, key) {
  try {
    const response = await fetch(`${base}/v1/realtime/client_secrets`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ session: { type: 'realtime', model: 'gpt-realtime' } }),
    });
    probe.rest = { ok: true, status: response.status, body: await response.json() };
  } catch (error) {
    probe.rest = { ok: false, error: describe(error) };
  }
  show();
}

async function inboundAudio(transport) {
  const pc = transport.connectionState.peerConnection;
  if (!pc) return;
  const stats = await pc.getStats();
  stats.forEach((report) => {
    if (report.type === 'inbound-rtp' && report.kind === 'audio') {
      probe.audio = { energy: report.totalAudioEnergy ?? 0, packets: report.packetsReceived ?? 0 };
    }
  });
  show();
}

async function talk(base, ek) {
  const transport = new OpenAIRealtimeWebRTC({
    baseUrl: `${base}/v1/realtime/calls`,
    audioElement: $('remote'),
  });
  const agent = new RealtimeAgent({ name: 'probe', instructions: 'Answer in one short sentence.' });
  const session = new RealtimeSession(agent, { transport, model: 'gpt-realtime' });
  window.session = session;
  session.on('transport_event', (event) => { probe.events.push(event.type); show(); });
  session.on('history_updated', (history) => { probe.history = JSON.parse(JSON.stringify(history)); show(); });
  session.on('error', fail);
  transport.on('connection_change', (status) => { probe.status = status; show(); });
  probe.status = 'connecting';
  show();
  await session.connect({ apiKey: ek });
  probe.connected = true;
  probe.callId = transport.callId ?? null;
  probe.status = transport.status;
  show();
  setInterval(() => inboundAudio(transport).catch(fail), 250);
  session.sendMessage(params.get('message') ?? 'ping');
}

async function main() {
  show();
  const base = params.get('base');
  if (base && params.get('mode') === 'rest') {
    await restProbe(base, params.get('key'));
  } else if (base && params.get('ek')) {
    await talk(base, params.get('ek'));
  }
}

main().catch((error) => { probe.status = 'failed'; fail(error); });
