"""The WebRTC media track's own work: Opus frames stamped on a 20 ms clock, skipped while nothing
plays (a keep-alive every 400 ms, as Opus DTX) and resumed on the grid when audio comes; the
microphone's stereo -> mono."""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
import pytest
from av import AudioFrame, CodecContext
from av.audio.resampler import AudioResampler
from av.packet import Packet

from parley.runtime.playout import Playout
from parley.transports.webrtc import HANGOVER_FRAMES, KEEPALIVE_FRAMES, PlayoutTrack, RemoteMicrophone, sends_opus

from tests.unit.test_playout import PCM, tone

FRAME = 960


def opus_track() -> PlayoutTrack:
    track = PlayoutTrack(Playout(lambda _e: None))
    track.encode_opus = True
    return track


async def test_idle_track_sends_a_hangover_then_one_frame_per_400_ms() -> None:
    track = opus_track()
    began = time.monotonic()
    stamps = []
    while time.monotonic() - began < 1.0:
        packet = await track.recv()
        assert isinstance(packet, Packet) and packet.time_base == fractions.Fraction(1, 48000)
        stamps.append(packet.pts)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert steps[:HANGOVER_FRAMES - 1] == [FRAME] * (HANGOVER_FRAMES - 1)
    assert set(steps[HANGOVER_FRAMES - 1:]) == {KEEPALIVE_FRAMES * FRAME}
    assert len(stamps) <= HANGOVER_FRAMES + 3  # 50 a second before


async def test_audio_after_silence_goes_out_on_the_next_tick_stamped_where_it_plays() -> None:
    track = opus_track()
    before = []
    while track._quiet < HANGOVER_FRAMES + 1:  # into the idle keep-alives
        before.append(await track.recv())
    receive = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.13)  # between keep-alives
    pushed = time.monotonic() - track._start
    track.playout.push("r", "i", 0, tone(300), PCM)
    track.playout.finish("r")
    first = await receive
    sent = time.monotonic() - track._start
    assert 0 <= first.pts / 48000 - pushed <= 0.025  # the next tick of the grid
    assert abs(sent - first.pts / 48000) < 0.02
    packets = [first] + [await track.recv() for _ in range(17)]
    assert [p.pts - first.pts for p in packets] == [FRAME * i for i in range(18)]
    assert abs(time.monotonic() - track._start - packets[-1].pts / 48000) < 0.02  # real-time pace
    decoder = CodecContext.create("libopus", "r")
    decoder.sample_rate, decoder.layout, decoder.format = 48000, "stereo", "s16"
    peaks = [int(np.abs(f.to_ndarray().astype(np.int32)).max())
             for p in before + packets for f in decoder.decode(Packet(bytes(p)))][len(before):]
    assert min(peaks[1:14]) > 4000 and max(peaks[-2:]) < 100  # 300 ms of tone, then silence


async def test_without_opus_the_track_gives_aiortc_paced_frames() -> None:
    track = PlayoutTrack(Playout(lambda _e: None))
    frames = [await track.recv() for _ in range(10)]
    assert all(isinstance(f, AudioFrame) and f.samples == FRAME for f in frames)
    assert [f.pts for f in frames] == [FRAME * i for i in range(10)]


def test_sends_opus_reads_the_answers_first_audio_codec() -> None:
    answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
    assert sends_opus(answer)
    assert not sends_opus(answer.replace("SAVPF 111 0", "SAVPF 0 111"))
    assert not sends_opus("v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n")


class _Track:
    def __init__(self, frames: list[AudioFrame]) -> None:
        self.frames = frames

    async def recv(self) -> AudioFrame:
        return self.frames.pop(0)


@pytest.mark.parametrize("same", [True, False])
async def test_microphone_downmix_matches_the_resampler(same: bool) -> None:
    rng = np.random.default_rng(1)
    stereo = (rng.standard_normal(2 * FRAME) * 8000).astype(np.int16)
    if same:  # a mono Opus stream decodes to two equal channels
        stereo[1::2] = stereo[0::2]

    def frame() -> AudioFrame:
        f = AudioFrame.from_ndarray(stereo.reshape(1, -1), format="s16", layout="stereo")
        f.sample_rate, f.pts, f.time_base = 48000, 0, fractions.Fraction(1, 48000)
        return f

    mic = RemoteMicrophone()
    mic.set_track(_Track([frame()]))  # type: ignore[arg-type]
    ours = await mic.read()
    reference = np.concatenate([f.to_ndarray().reshape(-1) for f in
                                AudioResampler(format="s16", layout="mono", rate=48000).resample(frame())])
    assert ours is not None and ours.dtype == np.int16 and len(ours) == FRAME
    difference = np.abs(ours.astype(np.int32) - reference).max()
    assert difference == 0 if same else difference <= 1
