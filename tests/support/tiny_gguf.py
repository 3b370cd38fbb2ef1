"""A tiny random-weight llama-architecture GGUF model, for tests that exercise the real
llama.cpp loading and generation path without any downloaded weights.

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256)

The model has 64 dimensions, 2 layers, a ~420-token SentencePiece-style vocabulary (special
tokens, 256 byte-fallback tokens, single characters and a few words) and a ChatML chat
template, so any text tokenizes and chat completions stream.  What it says is nonsense, but it is
deterministic: the weights are seeded, and the output projection rows of the special tokens are
zero, so greedy decoding (temperature 0) never picks an end-of-generation token and always
runs to `max_tokens` (finish_reason "length").  Byte tokens are also never generated, so every
generated token decodes to printable ASCII text.

Writing takes a few milliseconds; the file is about 0.6 MB.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# ChatML, written so that llama-cpp-python does not recognise it as its built-in "chatml" format
# (which adds an empty system turn): the model's own template is rendered with Jinja, as it is for
# most real GGUF models.  Tools, when given, are listed in a system turn.
CHATML_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\nTools: ' + (tools | tojson) + '<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_CTX_TRAIN = 8192

_WORDS = [
    "the", "and", "you", "hello", "world", "light", "kitchen", "turn", "off", "on", "what",
    "is", "weather", "in", "paris", "yes", "no", "okay", "sure", "thanks", "time", "please",
    "call", "tool", "get", "a", "to", "of", "it", "that",
]  # fmt: skip


def _vocab() -> tuple[list[str], list[float], list[int]]:
    """SentencePiece ("llama") vocabulary: tokens, merge scores, token types."""
    from gguf import TokenType

    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types: list[int] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(TokenType.BYTE)
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [TokenType.CONTROL, TokenType.CONTROL]
    normal: list[str] = ["\u2581"]  # the SentencePiece space marker
    normal += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    normal += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    normal += [str(d) for d in range(10)]
    normal += list(".,!?'-:;()\"")
    # SentencePiece merges adjacent pieces only into pieces in the vocabulary, so a word needs all
    # its prefixes: "▁h", "▁he", "▁hel", "▁hell", "▁hello".
    for word in _WORDS:
        piece = "\u2581" + word
        normal += [piece[:n] for n in range(2, len(piece) + 1) if piece[:n] not in normal]
    tokens += normal
    types += [TokenType.NORMAL] * len(normal)
    # Longer pieces merge first; specials and bytes get score 0.
    scores = [0.0] * (len(tokens) - len(normal)) + [float(len(t)) for t in normal]
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write the tiny model to `path` (parents are created) and return it as a Path."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    im_start, im_end = tokens.index("<|im_start|>"), tokens.index("<|im_end|>")

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("parley-tiny-random")
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(im_start)
    writer.add_eos_token_id(im_end)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    rng = np.random.default_rng(seed)

    def rand(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    n_embd_kv = N_EMBD // N_HEAD * N_HEAD_KV
    # numpy shapes are (rows, cols) = (out_features, in_features); gguf reverses them.
    writer.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD, scale=1.0))
    for i in range(N_LAYER):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", rand(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_k.weight", rand(n_embd_kv, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_v.weight", rand(n_embd_kv, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_output.weight", rand(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", rand(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", rand(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", rand(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    output = rand(n_vocab, N_EMBD, scale=1.0)
    # Special and byte tokens get logit 0 while ordinary tokens get random logits, the largest
    # of which is positive: greedy decoding only ever emits printable, non-final tokens.
    first_normal = types.index(int(gguf.TokenType.NORMAL))
    output[:first_normal] = 0.0
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    print(write_tiny_gguf(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf"))
