"""A tiny stand-in for the Kokoro v1.0 ONNX model and its voices file, for tests.

The real `kokoro-v1.0.onnx` (80-310 MB) cannot be fetched where tests run, so this writes a
graph with exactly the signature kokoro-onnx feeds and reads (see `kokoro_onnx.Kokoro._infer`
and `kokoro_onnx.session.input_dtypes`):

    inputs   tokens  int64   [1, n]    phoneme ids, already padded with 0 at both ends
             style   float32 [1, 256]  one row of the voice's style table
             speed   float32 [1]
    output   audio   float32 [samples] mono, 24 kHz

and, instead of speech, a sine wave: `SAMPLES_PER_TOKEN * n / speed` samples (floored) at a
pitch set by the style (`BASE_HZ * (1 + tanh(mean(style)) / 2)`), amplitude `AMPLITUDE`.
So audio grows with the text, shrinks with speed, differs by voice, and is never silent
(kokoro-onnx's silence trimming leaves a steady tone whole).

The voices file is what kokoro-onnx's `np.load(voices_path)` expects of `voices-v1.0.bin`: an
uncompressed .npz archive of name -> float32 [rows, 1, 256] (510 rows in the real file; Kokoro
takes row `min(tokens, rows) - 1`, so 4 rows do).  Both files together are about 50 kB.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

SAMPLE_RATE = 24_000
SAMPLES_PER_TOKEN = 600  # 25 ms per phoneme at speed 1.0
BASE_HZ = 300.0
AMPLITUDE = 0.4
STYLE_DIM = 256
VOICE_ROWS = 4
OPSET = 17

#: The Kokoro voices `KokoroTTS` maps the OpenAI voices to, plus one British and one
#: non-English voice, so language selection can be exercised.
DEFAULT_VOICES = (
    "af_heart", "am_michael", "bm_fable", "af_bella", "am_fenrir",
    "af_nicole", "af_sky", "bm_george", "af_sarah", "am_puck", "bf_emma", "ef_dora",
)  # fmt: skip


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(value, name))


def build_model() -> onnx.ModelProto:
    f32, i64 = np.float32, np.int64
    nodes = [
        # n = tokens.shape[1]; samples = floor(n * SAMPLES_PER_TOKEN / speed)  (a scalar)
        helper.make_node("Shape", ["tokens"], ["shape"]),
        _const("one", np.array(1, dtype=i64)),
        helper.make_node("Gather", ["shape", "one"], ["n"], axis=0),
        helper.make_node("Cast", ["n"], ["n_f"], to=TensorProto.FLOAT),
        _const("per_token", np.array(SAMPLES_PER_TOKEN, dtype=f32)),
        helper.make_node("Mul", ["n_f", "per_token"], ["length_at_1"]),
        helper.make_node("Div", ["length_at_1", "speed"], ["length_1d"]),
        helper.make_node("Floor", ["length_1d"], ["length_floor"]),
        helper.make_node("Cast", ["length_floor"], ["length_i"], to=TensorProto.INT64),
        _const("axis0", np.array([0], dtype=i64)),
        helper.make_node("Squeeze", ["length_i", "axis0"], ["length"]),
        # t = range(length); phase step = 2 pi f / sr with f = BASE_HZ * (1 + tanh(mean(style)) / 2)
        _const("zero", np.array(0, dtype=i64)),
        helper.make_node("Range", ["zero", "length", "one"], ["index"]),
        helper.make_node("Cast", ["index"], ["t"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["style"], ["style_mean"], keepdims=0),
        helper.make_node("Tanh", ["style_mean"], ["style_tanh"]),
        _const("half", np.array(0.5, dtype=f32)),
        helper.make_node("Mul", ["style_tanh", "half"], ["pitch_offset"]),
        _const("unit", np.array(1.0, dtype=f32)),
        helper.make_node("Add", ["pitch_offset", "unit"], ["pitch_factor"]),
        _const("base_step", np.array(2 * np.pi * BASE_HZ / SAMPLE_RATE, dtype=f32)),
        helper.make_node("Mul", ["pitch_factor", "base_step"], ["step"]),
        helper.make_node("Mul", ["t", "step"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["wave"]),
        _const("amplitude", np.array(AMPLITUDE, dtype=f32)),
        helper.make_node("Mul", ["wave", "amplitude"], ["audio"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_kokoro",
        inputs=[
            helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, "n_tokens"]),
            helper.make_tensor_value_info("style", TensorProto.FLOAT, [1, STYLE_DIM]),
            helper.make_tensor_value_info("speed", TensorProto.FLOAT, [1]),
        ],
        outputs=[helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["n_samples"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="parley-tests")
    model.ir_version = 8  # readable by any onnxruntime since 1.10
    onnx.checker.check_model(model, full_check=True)
    return model


def voice_style(name: str, rows: int = VOICE_ROWS) -> np.ndarray:
    """A deterministic float32 [rows, 1, 256] style table whose mean differs per voice."""
    seed = zlib.crc32(name.encode())
    rng = np.random.default_rng(seed)
    mean = (seed % 1000) / 1000 - 0.5  # in [-0.5, 0.5): the pitch of this voice
    return (rng.normal(0.0, 0.1, (rows, 1, STYLE_DIM)) + mean).astype(np.float32)


def write_model(path: str | Path) -> Path:
    path = Path(path)
    onnx.save(build_model(), str(path))
    return path


def write_voices(path: str | Path, names: Iterable[str] = DEFAULT_VOICES) -> Path:
    """Write an uncompressed .npz under exactly `path` (np.savez to a path would add .npz)."""
    path = Path(path)
    with path.open("wb") as f:
        np.savez(f, **{name: voice_style(name) for name in names})
    return path


def write_fixture(directory: str | Path) -> tuple[Path, Path]:
    """(model, voices) written into `directory` under the real files' names."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return write_model(directory / "kokoro-v1.0.onnx"), write_voices(directory / "voices-v1.0.bin")


def expected_samples(n_tokens: int, speed: float = 1.0) -> int:
    """Samples the graph makes for `n_tokens` phoneme ids (before Kokoro adds the two pads)."""
    return int(np.floor(np.float32(n_tokens + 2) * np.float32(SAMPLES_PER_TOKEN) / np.float32(speed)))
