// Parley playground: one WebRTC call to this server, the same flow a browser app uses with the
// hosted Realtime API (ephemeral key -> SDP offer/answer -> JSON events on the "oai-events" channel).

const $ = (id) => document.getElementById(id);

const MAX_LOG_ENTRIES = 500;
const ICE_GATHERING_CAP_MS = 3000;
const CHANNEL_OPEN_TIMEOUT_MS = 15000;
const STATS_INTERVAL_MS = 250;

const TIME_TOOL = {
  type: 'function',
  name: 'get_current_time',
  description: 'Returns the current date and time (ISO 8601, UTC).',
  parameters: { type: 'object', properties: {}, required: [] },
};

// For tests and the console. pc/dc/callId keep pointing at the last call after it ends.
const parley = { pc: null, dc: null, callId: null, events: [], remoteAudio: { energy: 0, peak: 0, level: 0 } };
window.parley = parley;

let call = null; // the live call: { pc, dc, mic, key, statsTimer, openTimer }
const turns = new Map(); // item id -> transcript element

// ---- status and buttons --------------------------------------------------------------------

function setStatus(text) {
  $('status').textContent = text;
  updateButtons();
}

function updateButtons() {
  const open = call?.dc.readyState === 'open';
  $('connect').disabled = call !== null;
  $('hangup').disabled = call === null;
  $('apply').disabled = !open;
  $('send').disabled = !open;
}

function logError(message) {
  logEntry('local', `error: ${message}`, { message });
}

// ---- event log -----------------------------------------------------------------------------

const DIRECTION_LABEL = { sent: '→ sent', received: '← received', http: '⇄ http', local: '! page' };

function logEntry(direction, type, payload) {
  const list = $('events');
  const stickToBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 30;
  const li = document.createElement('li');
  li.className = direction;
  li.dataset.direction = direction;
  li.dataset.type = type;
  const details = document.createElement('details');
  const summary = document.createElement('summary');
  const dir = document.createElement('span');
  dir.className = 'dir';
  dir.textContent = DIRECTION_LABEL[direction];
  const name = document.createElement('span');
  name.className = 'type';
  name.textContent = type;
  summary.append(dir, ' ', name);
  details.append(summary);
  // JSON is rendered on first open: audio deltas can be large and most entries are never opened.
  details.addEventListener('toggle', () => {
    if (details.open && !details.querySelector('pre')) {
      const pre = document.createElement('pre');
      pre.textContent = JSON.stringify(payload, null, 2);
      details.append(pre);
    }
  });
  li.append(details);
  list.append(li);
  while (list.children.length > MAX_LOG_ENTRIES) list.firstElementChild.remove();
  if (stickToBottom) list.scrollTop = list.scrollHeight;
}

// ---- transcript ----------------------------------------------------------------------------

function turnFor(itemId, role) {
  let el = turns.get(itemId);
  if (!el) {
    el = document.createElement('div');
    el.className = `turn ${role}`;
    el.dataset.itemId = itemId;
    $('transcript').append(el);
    turns.set(itemId, el);
  }
  return el;
}

function appendText(itemId, role, delta) {
  const el = turnFor(itemId, role);
  el.textContent += delta;
  scrollTranscript();
}

function setText(itemId, role, text) {
  turnFor(itemId, role).textContent = text ?? '';
  scrollTranscript();
}

function scrollTranscript() {
  const box = $('transcript');
  box.scrollTop = box.scrollHeight;
}

function showItem(item) {
  if (item?.type !== 'message' || (item.role !== 'user' && item.role !== 'assistant')) return;
  const text = (item.content ?? []).map((part) => part.text ?? part.transcript ?? '').join('');
  const el = turnFor(item.id, item.role);
  if (text) el.textContent = text;
}

// ---- session config ------------------------------------------------------------------------

function sessionConfig() {
  const mode = $('turn-detection').value;
  return {
    type: 'realtime',
    instructions: $('instructions').value,
    audio: {
      input: {
        turn_detection: mode === 'none' ? null : { type: mode },
        transcription: { model: 'whisper-1' },
      },
      output: { voice: $('voice').value },
    },
    tools: $('tool-enabled').checked ? [TIME_TOOL] : [],
  };
}

// ---- HTTP ----------------------------------------------------------------------------------

// The API's {"error": {"message"}} or FastAPI's {"detail"}, else the start of the body.
async function errorMessage(res) {
  const text = await res.text();
  let message = text.slice(0, 200);
  try {
    const body = JSON.parse(text);
    message = body.error?.message ?? (typeof body.detail === 'string' ? body.detail : message);
  } catch {
    // not JSON: keep the text
  }
  return `HTTP ${res.status}: ${message}`.trim();
}

async function httpPost(path, { body, headers }, payloadForLog) {
  logEntry('http', `POST ${path}`, payloadForLog ?? { method: 'POST', path });
  let res;
  try {
    res = await fetch(path, { method: 'POST', body, headers });
  } catch (err) {
    throw new Error(`POST ${path} failed: ${err.message}`);
  }
  if (!res.ok) throw new Error(`POST ${path}: ${await errorMessage(res)}`);
  return res;
}

async function mintEphemeralKey() {
  const headers = { 'Content-Type': 'application/json' };
  const apiKey = $('api-key').value.trim();
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const body = { session: { ...sessionConfig(), model: 'gpt-realtime' } };
  const res = await httpPost('/v1/realtime/client_secrets', { body: JSON.stringify(body), headers }, body);
  return (await res.json()).value;
}

async function exchangeSdp(offerSdp, key) {
  const headers = { 'Content-Type': 'application/sdp', Authorization: `Bearer ${key}` };
  const res = await httpPost('/v1/realtime/calls', { body: offerSdp, headers }, { sdp: offerSdp });
  const location = res.headers.get('Location');
  const answer = await res.text();
  return { answer, callId: location ? location.split('/').pop() : null };
}

// ---- WebRTC --------------------------------------------------------------------------------

// aiortc does not take trickled candidates, so the offer must carry them: wait for gathering.
function iceGatheringComplete(pc, capMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== 'complete') return;
      pc.removeEventListener('icegatheringstatechange', done);
      resolve();
    };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, capMs);
  });
}

async function connect() {
  if (call) return;
  setStatus('connecting');
  try {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new Error('no microphone API: open this page over https or on localhost');
    }
    const key = await mintEphemeralKey();
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    const pc = new RTCPeerConnection();
    const dc = pc.createDataChannel('oai-events');
    call = { pc, dc, mic, key, statsTimer: null, openTimer: null };
    Object.assign(parley, { pc, dc, callId: null });
    updateButtons();

    pc.ontrack = (e) => {
      const audio = $('remote-audio');
      audio.srcObject = e.streams[0] ?? new MediaStream([e.track]);
      audio.play().catch(() => {}); // autoplay may need the click that started the call; it had one
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed' && call?.pc === pc) endCall('error: WebRTC connection failed (ICE)');
    };
    for (const track of mic.getTracks()) pc.addTrack(track, mic);
    dc.onopen = () => onChannelOpen(dc);
    dc.onmessage = (e) => onChannelMessage(e.data);
    dc.onclose = () => {
      if (call?.dc === dc) endCall('ended');
    };

    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc, ICE_GATHERING_CAP_MS);
    if (call?.pc !== pc) return; // hung up while gathering
    const { answer, callId } = await exchangeSdp(pc.localDescription.sdp, key);
    parley.callId = callId;
    if (call?.pc !== pc) { // hung up while the server answered: end its side too
      if (callId) postHangup(callId, key);
      return;
    }
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    startStats(pc);
    call.openTimer = setTimeout(() => {
      if (call?.dc === dc && dc.readyState !== 'open') endCall('error: the data channel did not open');
    }, CHANNEL_OPEN_TIMEOUT_MS);
  } catch (err) {
    logError(err.message);
    endCall(`error: ${err.message}`);
  }
}

async function postHangup(callId, key) {
  try {
    const res = await httpPost(`/v1/realtime/calls/${encodeURIComponent(callId)}/hangup`,
      { headers: { Authorization: `Bearer ${key}` } });
    await res.text(); // read the (empty) body, or Chromium reports the request as aborted
  } catch (err) {
    logError(err.message); // our side closes anyway
  }
}

async function hangUp() {
  if (!call) return;
  if (parley.callId) await postHangup(parley.callId, call.key);
  endCall('ended');
}

// Close everything of the live call; the final status is `ended` or `error: ...`.
function endCall(status) {
  if (!call) return;
  const { pc, dc, mic, openTimer, statsTimer } = call;
  call = null;
  clearTimeout(openTimer);
  clearInterval(statsTimer);
  dc.close();
  pc.close();
  for (const track of mic.getTracks()) track.stop();
  $('remote-audio').srcObject = null;
  $('remote-level').value = 0;
  parley.remoteAudio.level = 0;
  setStatus(status);
}

// ---- data channel --------------------------------------------------------------------------

function send(event) {
  if (call?.dc.readyState !== 'open') return false;
  call.dc.send(JSON.stringify(event));
  logEntry('sent', event.type, event);
  return true;
}

function onChannelOpen(dc) {
  if (call?.dc !== dc) return;
  setStatus('connected');
  send({ type: 'session.update', session: sessionConfig() });
}

function onChannelMessage(data) {
  let event;
  try {
    event = JSON.parse(data);
  } catch {
    logEntry('local', 'unparsable message', { data: String(data).slice(0, 2000) });
    return;
  }
  parley.events.push(event);
  logEntry('received', event.type ?? '(no type)', event);
  handleEvent(event);
}

function handleEvent(event) {
  switch (event.type) {
    case 'conversation.item.added':
    case 'conversation.item.created': // beta name
      showItem(event.item);
      break;
    case 'conversation.item.input_audio_transcription.delta':
      appendText(event.item_id, 'user', event.delta ?? '');
      break;
    case 'conversation.item.input_audio_transcription.completed':
      setText(event.item_id, 'user', event.transcript);
      break;
    case 'response.output_audio_transcript.delta':
    case 'response.output_text.delta':
      appendText(event.item_id, 'assistant', event.delta ?? '');
      break;
    case 'response.output_audio_transcript.done':
      setText(event.item_id, 'assistant', event.transcript);
      break;
    case 'response.output_text.done':
      setText(event.item_id, 'assistant', event.text);
      break;
    case 'response.done':
      onResponseDone(event.response ?? {});
      break;
    case 'error':
      setStatus(`error: ${event.error?.message ?? 'unknown error'}`);
      break;
  }
}

function onResponseDone(response) {
  if (response.status === 'failed') {
    setStatus(`error: ${response.status_details?.error?.message ?? 'the response failed'}`);
    return;
  }
  if (response.status !== 'completed') return; // cancelled or cut short: its calls are not final
  const calls = (response.output ?? []).filter((item) => item.type === 'function_call');
  if (calls.length === 0) return;
  // A browser app answers tool calls itself: one output per call, then one new response.
  for (const toolCall of calls) {
    send({
      type: 'conversation.item.create',
      item: { type: 'function_call_output', call_id: toolCall.call_id, output: JSON.stringify(runTool(toolCall.name)) },
    });
  }
  send({ type: 'response.create' });
}

function runTool(name) {
  if (name === 'get_current_time') return { time: new Date().toISOString() };
  return { error: `unknown function ${name}` };
}

// ---- remote audio level --------------------------------------------------------------------

// getStats() levels work in headless Chromium; WebAudio analysers on remote WebRTC streams do not.
function startStats(pc) {
  Object.assign(parley.remoteAudio, { energy: 0, peak: 0, level: 0 });
  call.statsTimer = setInterval(async () => {
    let stats;
    try {
      stats = await pc.getStats();
    } catch {
      return; // closed meanwhile
    }
    stats.forEach((report) => {
      if (report.type !== 'inbound-rtp' || report.kind !== 'audio') return;
      const level = report.audioLevel ?? 0;
      const audio = parley.remoteAudio;
      audio.energy = report.totalAudioEnergy ?? audio.energy;
      audio.level = level;
      audio.peak = Math.max(audio.peak, level);
      const meter = $('remote-level');
      meter.value = level;
      meter.title = `level ${level.toFixed(3)}, peak ${audio.peak.toFixed(3)}, energy ${audio.energy.toFixed(4)}`;
    });
  }, STATS_INTERVAL_MS);
}

// ---- wiring --------------------------------------------------------------------------------

function sendMessage(e) {
  e.preventDefault();
  const input = $('message');
  const text = input.value.trim();
  if (!text) return;
  const item = { type: 'message', role: 'user', content: [{ type: 'input_text', text }] };
  if (send({ type: 'conversation.item.create', item }) && send({ type: 'response.create' })) input.value = '';
}

$('connect').addEventListener('click', connect);
$('hangup').addEventListener('click', hangUp);
$('apply').addEventListener('click', () => send({ type: 'session.update', session: sessionConfig() }));
$('message-form').addEventListener('submit', sendMessage);
$('settings').addEventListener('submit', (e) => e.preventDefault()); // Enter in a field must not reload
setStatus('idle');
