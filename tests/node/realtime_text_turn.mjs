// One text turn with the `openai` Node SDK's GA Realtime client (`openai/realtime/ws`) against Parley.
//
//   node realtime_text_turn.mjs <baseURL> [apiKey] [expectedText]
//
// Each argument falls back to an environment variable: OPENAI_BASE_URL, OPENAI_API_KEY, EXPECTED_TEXT.
// PROMPT (default "ping") is the user message. The SDK always connects with wss://, so the server must speak
// TLS. If NODE_EXTRA_CA_CERTS is set the certificate is verified against it; otherwise verification is off
// (`rejectUnauthorized: false`).
//
// Prints exactly one JSON line on stdout: {ok, text, status, events, error?}. Exits 0 only when a response.done
// arrived with status "completed" (and, if an expected text was given, the text equals it); 1 on an error,
// 2 on the 10 s timeout.
import OpenAI from 'openai';
import { OpenAIRealtimeWS } from 'openai/realtime/ws';

const [argBaseURL, argApiKey, argExpected] = process.argv.slice(2);
const baseURL = argBaseURL || process.env.OPENAI_BASE_URL;
const apiKey = argApiKey || process.env.OPENAI_API_KEY || 'local-test';
const expected = argExpected ?? process.env.EXPECTED_TEXT;
const prompt = process.env.PROMPT || 'ping';
const TIMEOUT_MS = 10_000;

const events = [];
let text = '';
let status = null;
let finished = false;

function finish(code, error) {
  if (finished) return;
  finished = true;
  const result = { ok: code === 0, text, status, events };
  if (error) result.error = error;
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code));
}

if (!baseURL) {
  finish(1, 'usage: node realtime_text_turn.mjs <baseURL> [apiKey] [expectedText]');
} else {
  const timer = setTimeout(() => finish(2, `timeout after ${TIMEOUT_MS} ms`), TIMEOUT_MS);

  const client = new OpenAI({ apiKey, baseURL });
  const options = process.env.NODE_EXTRA_CA_CERTS ? {} : { rejectUnauthorized: false };
  let rt;
  try {
    rt = new OpenAIRealtimeWS({ model: 'gpt-realtime', options }, client);
  } catch (err) {
    finish(1, `could not open: ${err?.message ?? err}`);
  }

  if (rt) {
    rt.on('error', (err) => {
      const cause = err?.cause?.message ? ` (${err.cause.message})` : '';
      finish(1, `${err?.message ?? err}${cause}`);
    });
    rt.on('event', (event) => events.push(event.type));
    rt.on('response.output_text.delta', (event) => {
      text += event.delta;
    });
    rt.on('response.done', (event) => {
      status = event.response?.status ?? null;
      clearTimeout(timer);
      rt.close();
      if (status !== 'completed') {
        finish(1, `response.done with status ${status}: ${JSON.stringify(event.response?.status_details ?? null)}`);
      } else if (expected !== undefined && text !== expected) {
        finish(1, `expected ${JSON.stringify(expected)}, got ${JSON.stringify(text)}`);
      } else {
        finish(0);
      }
    });
    rt.socket.on('close', (code, reason) => {
      finish(1, `socket closed before response.done: ${code} ${reason?.toString() ?? ''}`.trim());
    });
    rt.socket.on('open', () => {
      rt.send({ type: 'session.update', session: { type: 'realtime', output_modalities: ['text'] } });
      rt.send({
        type: 'conversation.item.create',
        item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: prompt }] },
      });
      rt.send({ type: 'response.create' });
    });
  }
}
