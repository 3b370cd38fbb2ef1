"""The REST audio surface through the official `openai` SDK against a real Parley process:
`/v1/audio/speech` (espeak-ng), `/v1/audio/transcriptions` and `/translations` (pocketsphinx),
and `/v1/chat/completions` with audio in and out, over a scripted LLM server."""

from __future__ import annotations

import base64
import io
import json
import socket
import wave
from collections.abc import Iterator

import av
import httpx
import numpy as np
import pytest
from openai import AsyncOpenAI, BadRequestError

from tests.e2e.test_speech import wer
from tests.support.parley_server import ParleyServer
from tests.support.scripted_llm import Text, ToolCall
from tests.support.speech import make_speech

pytest.importorskip("pocketsphinx")

SENTENCE = "turn off the lights in the kitchen"
UPLOAD_CAP = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def audio_server(scripted_llm) -> Iterator[ParleyServer]:
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model,
           "PARLEY_STT_ENGINE": "pocketsphinx", "PARLEY_TTS_ENGINE": "espeak",
           "PARLEY_MAX_AUDIO_UPLOAD_BYTES": str(UPLOAD_CAP)}
    with ParleyServer(env, name="audio-api") as server:
        yield server


@pytest.fixture
def aclient(audio_server) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=audio_server.api_key, base_url=audio_server.base_url)


def wav_bytes(pcm: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def av_samples(data: bytes) -> tuple[np.ndarray, int]:
    """Decode with PyAV directly (not Parley's helper): mono float samples and their rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().reshape(f.layout.nb_channels if f.format.is_planar else 1, -1)[0]
                  for f in container.decode(stream)]
        return np.concatenate(frames).astype(np.float64), stream.rate


# ---- speech ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
async def test_speech_formats_decode_to_speech(aclient, fmt):
    async with aclient.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="Hello from Parley. This is a test.", response_format=fmt) as resp:
        assert resp.headers["content-type"].startswith("audio/")
        data = await resp.read()
    samples, rate = av_samples(data)
    seconds = samples.size / rate
    assert 1.0 < seconds < 8.0, seconds
    assert np.abs(samples).max() > 0.05 * (32768 if samples.max() > 1.5 else 1)


async def test_speech_pcm_speed_and_nova(aclient):
    async def length(speed: float) -> int:
        resp = await aclient.audio.speech.create(model="tts-1", voice="nova", input="One two three four five six.",
                                                 response_format="pcm", speed=speed)
        return len(resp.content) // 2
    normal, fast = await length(1.0), await length(2.0)
    assert normal > 24000 * 0.8  # 24 kHz PCM16: more than 0.8 s of speech
    assert fast < normal * 0.8


async def test_speech_sse_events(audio_server):
    async with httpx.AsyncClient(base_url=audio_server.base_url,
                                 headers={"Authorization": f"Bearer {audio_server.api_key}"}) as http:
        async with http.stream("POST", "/audio/speech", json={"model": "gpt-4o-mini-tts", "voice": "coral",
                                                               "input": "Streaming works.", "response_format": "pcm",
                                                               "stream_format": "sse"}) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[6:]) async for line in resp.aiter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done" and set(kinds[:-1]) == {"speech.audio.delta"} and len(kinds) > 2
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) > 24000  # over half a second
    assert events[-1]["usage"]["input_tokens"] > 0


async def test_speech_errors_have_the_hosted_shape(aclient, audio_server):
    with pytest.raises(BadRequestError) as err:
        await aclient.audio.speech.create(model="tts-1", voice="alloy", input="hi", response_format="ogg")  # type: ignore[arg-type]
    assert err.value.body["param"] == "response_format" and err.value.body["type"] == "invalid_request_error"
    with pytest.raises(BadRequestError) as err:
        await aclient.audio.speech.create(model="tts-1", voice="alloy", input="x" * 4097)
    assert err.value.body["code"] == "string_above_max_length"
    with pytest.raises(BadRequestError):
        await aclient.audio.speech.create(model="tts-1", voice="alloy", input="hi", speed=9)
    r = httpx.post(f"{audio_server.base_url}/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "hi"})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}


# ---- transcriptions ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spoken_wav() -> bytes:
    speech = make_speech(SENTENCE, rate=16000)
    return wav_bytes(speech.pcm, 16000)


async def test_transcription_json_text_and_timed_formats(aclient, spoken_wav):
    result = await aclient.audio.transcriptions.create(model="whisper-1", file=("speech.wav", spoken_wav))
    assert wer(SENTENCE, result.text) <= 0.3, result.text
    assert result.usage is not None and result.usage.type == "tokens" and result.usage.input_tokens > 0
    text = await aclient.audio.transcriptions.create(model="whisper-1", file=("s.wav", spoken_wav), response_format="text")
    assert text.strip() == result.text
    srt = await aclient.audio.transcriptions.create(model="whisper-1", file=("s.wav", spoken_wav), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0") and result.text in srt
    vtt = await aclient.audio.transcriptions.create(model="whisper-1", file=("s.wav", spoken_wav), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")
    verbose = await aclient.audio.transcriptions.create(model="whisper-1", file=("s.wav", spoken_wav),
                                                        response_format="verbose_json", language="en")
    assert verbose.language == "english" and verbose.text == result.text
    assert verbose.segments and verbose.segments[0].end == pytest.approx(verbose.duration)
    assert verbose.duration == pytest.approx(len(make_speech(SENTENCE, rate=16000).pcm) / 16000, abs=0.05)


async def test_transcription_of_mp3_upload(aclient):
    speech = make_speech(SENTENCE, rate=16000)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:  # the test encodes its own mp3 with PyAV
        stream = out.add_stream("libmp3lame", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(speech.pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    result = await aclient.audio.transcriptions.create(model="gpt-4o-transcribe", file=("s.mp3", buf.getvalue()))
    assert wer(SENTENCE, result.text) <= 0.3, result.text


async def test_transcription_stream_events(aclient, spoken_wav):
    stream = await aclient.audio.transcriptions.create(model="gpt-4o-transcribe", file=("s.wav", spoken_wav),
                                                       stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "transcript.text.done"
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert deltas and "".join(deltas) == events[-1].text
    assert wer(SENTENCE, events[-1].text) <= 0.3
    assert events[-1].usage.total_tokens > 0


async def test_transcription_bad_inputs(aclient, audio_server):
    with pytest.raises(BadRequestError) as err:
        await aclient.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"not audio at all" * 100))
    assert err.value.body["param"] == "file" and "Invalid file format" in err.value.body["message"]
    with pytest.raises(BadRequestError) as err:
        await aclient.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"RIFF"), response_format="xml")  # type: ignore[arg-type]
    assert err.value.body["param"] == "response_format"
    auth = {"Authorization": f"Bearer {audio_server.api_key}"}
    r = httpx.post(f"{audio_server.base_url}/audio/transcriptions", json={"model": "whisper-1"}, headers=auth)
    assert r.status_code == 415 and r.json()["error"]["type"] == "invalid_request_error"


async def test_translation_refused_by_an_engine_that_cannot(aclient, spoken_wav):
    with pytest.raises(BadRequestError) as err:
        await aclient.audio.translations.create(model="whisper-1", file=("s.wav", spoken_wav))
    assert err.value.body["code"] == "translation_unsupported" and "pocketsphinx" in err.value.body["message"]


def test_upload_over_the_cap_is_refused(audio_server):
    auth = {"Authorization": f"Bearer {audio_server.api_key}"}
    big = b"\0" * (UPLOAD_CAP + 1024)
    r = httpx.post(f"{audio_server.base_url}/audio/transcriptions", headers=auth,
                   files={"file": ("a.wav", big)}, data={"model": "whisper-1"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # chunked, no Content-Length: the server must count as it reads, and answer 413 before the
    # body ends (this client never sends the end of it)
    with socket.create_connection(("127.0.0.1", audio_server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Authorization: Bearer " + audio_server.api_key.encode() +
                     b"\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\n")
        head = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
                b"Content-Type: audio/wav\r\n\r\n")
        sock.sendall(b"%x\r\n" % len(head) + head + b"\r\n")
        piece = b"\0" * 65536
        for _ in range(UPLOAD_CAP // len(piece) + 4):
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        answer = b""
        while b"}}" not in answer and (part := sock.recv(65536)):
            answer += part
    assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer
    # a body between the REST cap (1 MiB) and the audio cap is fine on the audio routes
    speech = make_speech(SENTENCE, rate=48000, lead_ms=6000, tail_ms=6000)
    data = wav_bytes(speech.pcm, 48000)
    assert 1024 * 1024 < len(data) < UPLOAD_CAP
    r = httpx.post(f"{audio_server.base_url}/audio/transcriptions", headers=auth, timeout=60,
                   files={"file": ("a.wav", data)}, data={"model": "whisper-1", "response_format": "text"})
    assert r.status_code == 200 and wer(SENTENCE, r.text) <= 0.3


# ---- chat completions --------------------------------------------------------------------------


async def test_chat_text_passes_through(aclient, llm):
    llm.enqueue(Text("Hello there, friend."))
    result = await aclient.chat.completions.create(model="gpt-4o", messages=[
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Say hello"}])
    assert result.choices[0].message.content == "Hello there, friend."
    assert result.choices[0].finish_reason == "stop"
    sent = llm.requests[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."} and sent[-1]["content"] == "Say hello"
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0


async def test_chat_audio_out_then_audio_id_reference(aclient, llm):
    llm.enqueue(Text("The lights are off now."))
    result = await aclient.chat.completions.create(
        model="gpt-4o-audio-preview", modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "Turn off the lights"}])
    message = result.choices[0].message
    assert message.content is None and message.audio is not None
    assert message.audio.transcript == "The lights are off now."
    assert message.audio.id.startswith("audio_") and message.audio.expires_at > 0
    samples, rate = av_samples(base64.b64decode(message.audio.data))
    assert rate == 24000 and samples.size > 24000 * 0.8
    assert result.usage.completion_tokens_details.audio_tokens > 0
    llm.enqueue(Text("You are welcome."))
    await aclient.chat.completions.create(model="gpt-4o-audio-preview", messages=[
        {"role": "user", "content": "Turn off the lights"},
        {"role": "assistant", "audio": {"id": message.audio.id}},
        {"role": "user", "content": "Thanks"}])
    sent = llm.requests[-1]["messages"]
    assert sent[1] == {"role": "assistant", "content": "The lights are off now."}
    with pytest.raises(BadRequestError) as err:
        await aclient.chat.completions.create(model="gpt-4o-audio-preview", messages=[
            {"role": "assistant", "audio": {"id": "audio_doesnotexist"}}, {"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "audio_not_found"


async def test_chat_input_audio_is_transcribed(aclient, llm, spoken_wav):
    llm.enqueue(Text("Done."))
    result = await aclient.chat.completions.create(model="gpt-4o-audio-preview", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Do this:"},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(spoken_wav).decode(), "format": "wav"}}]}])
    assert result.choices[0].message.content == "Done."
    user = llm.requests[-1]["messages"][-1]["content"]
    assert user.startswith("Do this:\n") and wer(SENTENCE, user.split("\n", 1)[1]) <= 0.3
    assert result.usage.prompt_tokens_details.audio_tokens >= 20  # ~2.5 s of speech at 10 tokens a second


async def test_chat_streamed_audio(aclient, llm):
    llm.enqueue(Text("First sentence here. And a second one."))
    stream = await aclient.chat.completions.create(
        model="gpt-4o-audio-preview", modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "user", "content": "Talk"}], stream=True, stream_options={"include_usage": True})
    transcript, data, ids, expires, finish, usage = "", b"", set(), [], None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            audio = getattr(choice.delta, "audio", None) or {}
            audio = audio if isinstance(audio, dict) else audio.model_dump()
            transcript += audio.get("transcript") or ""
            data += base64.b64decode(audio["data"]) if audio.get("data") else b""
            ids |= {audio["id"]} if audio.get("id") else set()
            expires += [audio["expires_at"]] if audio.get("expires_at") else []
            finish = choice.finish_reason or finish
    assert transcript == "First sentence here. And a second one."
    assert len(ids) == 1 and len(expires) == 1 and finish == "stop"
    assert len(data) // 2 > 24000  # over a second of 24 kHz PCM16
    assert usage.completion_tokens_details.audio_tokens > 0
    with pytest.raises(BadRequestError) as err:  # as the hosted API: streamed audio is pcm16 only
        await aclient.chat.completions.create(model="gpt-4o-audio-preview", modalities=["text", "audio"],
                                              audio={"voice": "alloy", "format": "mp3"}, stream=True,
                                              messages=[{"role": "user", "content": "Talk"}])
    assert err.value.body["param"] == "audio.format"


async def test_chat_streamed_tool_call(aclient, llm):
    llm.enqueue(ToolCall("get_weather", {"city": "Paris"}))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    stream = await aclient.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Weather?"}],
                                                   tools=tools, stream=True)
    name, args, finish = "", "", None
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                name += call.function.name or ""
                args += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert name == "get_weather" and json.loads(args) == {"city": "Paris"} and finish == "tool_calls"
    assert llm.requests[-1]["tools"][0]["function"]["name"] == "get_weather"


async def test_chat_bad_requests(aclient):
    with pytest.raises(BadRequestError) as err:
        await aclient.chat.completions.create(model="gpt-4o", messages=[])
    assert err.value.body["param"] == "messages"
    with pytest.raises(BadRequestError) as err:
        await aclient.chat.completions.create(model="gpt-4o", modalities=["text", "audio"],
                                              messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["param"] == "audio"


def test_metrics_count_the_routes(audio_server):
    r = httpx.post(f"{audio_server.base_url}/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hi."},
                   headers={"Authorization": f"Bearer {audio_server.api_key}"})
    assert r.status_code == 200
    text = httpx.get(f"http://127.0.0.1:{audio_server.port}/metrics").text
    assert 'parley_rest_requests_total{route="audio.speech",status="200"}' in text
    assert 'parley_rest_first_audio_seconds_count{route="audio.speech"}' in text
