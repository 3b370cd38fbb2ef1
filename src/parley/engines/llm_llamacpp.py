"""An in-process LLM engine on llama.cpp, through llama-cpp-python.

    llm = LlamaCppLLM("/models/qwen2.5-1.5b-instruct-q4_k_m.gguf", n_ctx=8192)
    llm = LlamaCppLLM("Qwen/Qwen2.5-1.5B-Instruct-GGUF:qwen2.5-1.5b-instruct-q4_k_m.gguf")
    llm = LlamaCppLLM("Qwen/Qwen2.5-1.5B-Instruct-GGUF", filename="*q4_k_m.gguf")
    llm = LlamaCppLLM("Qwen/Qwen2.5-1.5B-Instruct-GGUF:Q4_K_M")   # quantization tag, as llama.cpp's -hf
    await llm.load()                  # slow: runs in a worker thread (stream() loads on demand too)
    async for event in llm.stream(ChatRequest(messages=[...])):
        ...

`model` is a local ``.gguf`` path or a model-hub id.  Hub files are fetched with huggingface-hub
(progress bar, shared cache) the first time and found in the cache afterwards, also offline
(``HF_HUB_OFFLINE=1``) -- unlike ``Llama.from_pretrained``, which always lists the repository
online first.

One model runs one generation at a time: requests queue on a lock.  Generation runs in a single
dedicated worker thread; tokens cross to the event loop through an asyncio queue.  Cancelling the
consuming task sets a flag that the worker checks between tokens, so the model stops within one
token (the prompt's evaluation, one llama.cpp call per batch, is not interrupted) and the next
request can start.

llama-cpp-python is imported only when a model is loaded, so this module imports without it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley.core.chat import ChatRequest, Usage
from parley.engines.errors import EngineError
from parley.engines.hub import hub_offline
from parley.engines.llm import Finished, LLMEvent, TextDelta, ToolCallDelta

logger = logging.getLogger(__name__)

SETTING = "PARLEY_LLM_MODEL"
_EXPECTED = (
    f"{SETTING} should be a path to a .gguf file or a model-hub id such as "
    "'owner/repo:file.gguf' (or 'owner/repo:Q4_K_M')"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter"}


@dataclass
class _Generation:
    """The state one generation shares between the event loop and the worker thread."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int | None = None
    cached_tokens: int = 0
    completion_tokens: int = 0


class _Cancelled(Exception):
    """Raised inside the worker to abandon a cancelled prompt evaluation."""


@dataclass(frozen=True)
class _Error:
    error: BaseException


_DONE = object()


class LlamaCppLLM:
    """`LLMEngine` running a GGUF model in this process with llama-cpp-python."""

    name = "llama.cpp"

    def __init__(
        self,
        model: str,
        *,
        filename: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        chat_format: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        verbose: bool = False,
        prompt_chunk_tokens: int = 128,
        **llama_kwargs: Any,
    ) -> None:
        """`model`: a local .gguf path, or a hub id ``owner/repo:file.gguf``, ``owner/repo:<glob>``,
        ``owner/repo:<quant tag>`` or ``owner/repo`` with `filename` (a file name or glob such as
        ``*q4_k_m.gguf``; matched case-insensitively).  `chat_format` overrides the chat template
        stored in the GGUF (a llama-cpp-python format name such as "chatml" or
        "chatml-function-calling").  `cache_dir` overrides huggingface-hub's cache.  Other keyword
        arguments go to ``llama_cpp.Llama`` unchanged (``flash_attn``, ``n_batch``, ``seed``...).
        `prompt_chunk_tokens`: the prompt is evaluated in pieces of this many tokens, and a
        cancelled request stops after the current piece.
        """
        if not isinstance(model, str) or not model.strip():
            raise EngineError(f"No model configured: {_EXPECTED}.", code="model_not_found")
        self.model = model.strip()
        self.filename = filename
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.chat_format = chat_format
        self.cache_dir = cache_dir
        self.verbose = verbose
        self.llama_kwargs = llama_kwargs
        self.prompt_chunk_tokens = prompt_chunk_tokens
        self.model_path: Path | None = None  # the resolved local file, once loaded

        self._llama: Any = None
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="parley-llama.cpp"
        )
        self._load_future: Future[Any] | None = None
        self._lock = asyncio.Lock()
        self._active: _Generation | None = None
        self._closed = False

    # --- loading ---------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    @property
    def context_tokens(self) -> int:
        """The context window in tokens (the model's own once loaded, if `n_ctx` was 0)."""
        if self._llama is not None:
            return int(self._llama.n_ctx())
        return self.n_ctx

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by the model's tokenizer (no BOS added, special tokens parsed)."""
        if self._llama is None:
            raise EngineError("count_tokens needs the model: await load() first.", code="model_not_loaded")
        if not text:
            return 0
        try:
            return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        except Exception as exc:
            raise EngineError(f"llama.cpp could not tokenize: {exc}") from exc

    async def load(self) -> None:
        """Load the model (downloading it first for a hub id) in the worker thread.  Idempotent;
        concurrent callers share one load.  Raises `EngineError` naming PARLEY_LLM_MODEL."""
        if self._llama is not None:
            return
        if self._closed or self._executor is None:
            raise EngineError("The llama.cpp engine is closed.", code="engine_closed")
        if self._load_future is None or (
            self._load_future.done() and self._load_future.exception() is not None
        ):
            self._load_future = self._executor.submit(self._load_blocking)
        # shield: a cancelled caller does not abandon a half-loaded model; the next load() awaits
        # the same future.
        await asyncio.shield(asyncio.wrap_future(self._load_future))

    def _load_blocking(self) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise EngineError(
                "The in-process LLM needs llama-cpp-python: pip install 'parley[embedded]' "
                "(it compiles llama.cpp, a few minutes once).",
                code="dependency_missing",
            ) from exc
        path = self._resolve_model_file()
        kwargs: dict[str, Any] = {
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "verbose": self.verbose,
            **self.llama_kwargs,
        }
        if self.n_threads is not None:
            kwargs.setdefault("n_threads", self.n_threads)
            kwargs.setdefault("n_threads_batch", self.n_threads)
        if self.chat_format is not None:
            kwargs["chat_format"] = self.chat_format
        try:
            llama = llama_cpp.Llama(model_path=str(path), **kwargs)
        except Exception as exc:
            raise EngineError(
                f"llama.cpp could not load the model file {path} ({exc}). Is it a complete GGUF "
                f"file of an architecture this llama-cpp-python supports? Check {SETTING}: "
                f"{_EXPECTED}.",
                code="model_load_failed",
            ) from exc
        self._install_generate_hook(llama)
        self.model_path = path
        self._llama = llama
        logger.info("llama.cpp loaded %s (n_ctx=%d)", path, llama.n_ctx())

    def _resolve_model_file(self) -> Path:
        spec = self.model
        local = Path(spec).expanduser()
        if local.is_file():
            return local
        if local.is_dir():
            ggufs = sorted(local.glob("*.gguf"))
            if len(ggufs) == 1:
                return ggufs[0]
            raise EngineError(
                f"{SETTING}={spec!r} is a directory with {len(ggufs)} .gguf files; name one file. "
                f"{_EXPECTED}.",
                code="model_not_found",
            )
        repo_id, _, file_spec = spec.partition(":")
        looks_local = (
            spec.startswith(("/", ".", "~", "\\"))
            or (not file_spec and spec.lower().endswith(".gguf"))
            or re.match(r"^[A-Za-z]:[\\/]", spec) is not None
            or not _HUB_ID.match(repo_id)
        )
        if looks_local:
            raise EngineError(
                f"Model file not found: {spec!r}. {_EXPECTED}.", code="model_not_found"
            )
        pattern = file_spec or self.filename
        return _hub_download(repo_id, pattern, cache_dir=self.cache_dir)

    def _install_generate_hook(self, llama: Any) -> None:
        """Wrap ``llama.generate`` (every completion path runs through it) to count the prompt
        and generated tokens exactly and to stop between tokens once cancelled."""
        original = llama.generate
        try:
            from llama_cpp import llama_cpp as lib

            vocab = llama._model.vocab

            def is_eog(token: int) -> bool:
                return bool(lib.llama_vocab_is_eog(vocab, token))
        except Exception:  # pragma: no cover - private API moved; fall back to the EOS id
            eos = llama.token_eos()

            def is_eog(token: int) -> bool:
                return token == eos

        engine = self

        def generate(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            state = engine._active
            if state is not None:
                tokens = list(tokens)
                state.prompt_tokens = len(tokens)
                try:
                    if llama.n_tokens > 0:
                        state.cached_tokens = max(
                            0, min(llama.longest_token_prefix(llama._input_ids.tolist(), tokens), len(tokens) - 1)
                        )
                except Exception:  # pragma: no cover - private attribute moved
                    state.cached_tokens = 0
            gen = original(tokens, *args, **kwargs)
            try:
                sent = None
                while True:
                    if state is not None and state.cancelled.is_set():
                        return
                    token = gen.send(sent)
                    if state is not None and not is_eog(token):
                        state.completion_tokens += 1
                    sent = yield token
            except StopIteration:
                return
            finally:
                gen.close()

        original_eval = llama.eval
        chunk = max(1, min(int(getattr(llama, "n_batch", 512) or 512), self.prompt_chunk_tokens))

        def eval_(tokens: Any) -> None:
            # The prompt is evaluated in chunks so that a cancelled request stops within one
            # chunk rather than after the whole prompt.  The evaluated prefix stays in the KV
            # cache and is reused by the next request that shares it.
            state = engine._active
            tokens = list(tokens)
            if state is None or len(tokens) <= chunk:
                return original_eval(tokens)
            for start in range(0, len(tokens), chunk):
                if state.cancelled.is_set():
                    raise _Cancelled()
                original_eval(tokens[start : start + chunk])
            return None

        llama.generate = generate
        llama.eval = eval_

    # --- generation ------------------------------------------------------------------------

    async def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        if self._closed:
            raise EngineError("The llama.cpp engine is closed.", code="engine_closed")
        await self.load()
        kwargs = self._completion_kwargs(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        state = _Generation()

        def emit(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone; nobody is listening any more
                state.cancelled.set()

        def work() -> None:
            chunks: Any = None
            try:
                if state.cancelled.is_set():
                    return
                llama = self._llama
                if llama is None:
                    raise EngineError("The llama.cpp engine is closed.", code="engine_closed")
                chunks = llama.create_chat_completion(stream=True, **kwargs)
                for chunk in chunks:
                    if state.cancelled.is_set():
                        break
                    emit(chunk)
            except BaseException as exc:  # noqa: BLE001 - everything crosses to the loop
                emit(_Error(exc))
            finally:
                if chunks is not None and hasattr(chunks, "close"):
                    try:
                        chunks.close()
                    except Exception:  # pragma: no cover
                        logger.debug("closing the llama.cpp stream failed", exc_info=True)
                emit(_DONE)

        def release(_: Any = None) -> None:
            if self._active is state:
                self._active = None
            self._lock.release()

        await self._lock.acquire()
        future: asyncio.Future[None] | None = None
        finished = False
        try:
            if self._closed or self._executor is None:
                raise EngineError("The llama.cpp engine is closed.", code="engine_closed")
            self._active = state
            future = loop.run_in_executor(self._executor, work)
            tool_calls_seen: set[int] = set()
            reason: str | None = None
            text_chunks = 0
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if state.cancelled.is_set():  # only aclose() cancels while we are listening
                    raise EngineError("The llama.cpp engine was closed mid-response.", code="engine_closed")
                if isinstance(item, _Error):
                    raise _engine_error(item.error) from item.error
                choice = (item.get("choices") or [{}])[0]
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if content:
                    text_chunks += 1
                    yield TextDelta(content)
                for call in delta.get("tool_calls") or []:
                    index = int(call.get("index") or 0)
                    function = call.get("function") or {}
                    first = index not in tool_calls_seen
                    tool_calls_seen.add(index)
                    arguments = function.get("arguments") or ""
                    if first or arguments:
                        yield ToolCallDelta(
                            index=index,
                            arguments=arguments,
                            name=function.get("name") if first else None,
                            id=call.get("id") if first else None,
                        )
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
            if state.cancelled.is_set():
                raise EngineError("The llama.cpp engine was closed mid-response.", code="engine_closed")
            reason = _finish_reason(reason, bool(tool_calls_seen))
            usage = Usage(
                input_tokens=(
                    state.prompt_tokens
                    if state.prompt_tokens is not None
                    else self._estimate_prompt_tokens(request)
                ),
                output_tokens=state.completion_tokens or text_chunks,
                cached_tokens=state.cached_tokens,
            )
            finished = True
            yield Finished(reason=reason, usage=usage)
        finally:
            if future is None or future.done():
                release()
            else:
                # Cancelled (or the consumer stopped early): the worker stops at the next token;
                # the lock is released only then, so the next request never overlaps this one.
                if not finished:
                    state.cancelled.set()
                future.add_done_callback(release)

    def _completion_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"messages": [_prepare_message(m) for m in request.messages]}
        if request.tools:
            kwargs["tools"] = request.tools
            if request.tool_choice is not None:
                kwargs["tool_choice"] = request.tool_choice
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.model:
            kwargs["model"] = request.model
        return kwargs

    def _estimate_prompt_tokens(self, request: ChatRequest) -> int:
        text = "\n".join(str(m.get("content") or "") for m in request.messages)
        try:
            return self.count_tokens(text)
        except EngineError:
            return 0

    # --- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop any generation, then free the model.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._active is not None:
            self._active.cancelled.set()
        async with self._lock:  # waits for a running generation's worker to stop
            if self._load_future is not None and not self._load_future.done():
                try:
                    await asyncio.wrap_future(self._load_future)
                except Exception:
                    pass
            llama, self._llama = self._llama, None
            executor, self._executor = self._executor, None
            if executor is not None:
                if llama is not None:
                    await asyncio.get_running_loop().run_in_executor(executor, llama.close)
                executor.shutdown(wait=False)


# --- helpers -----------------------------------------------------------------------------------


def _prepare_message(message: dict[str, Any]) -> dict[str, Any]:
    """Chat templates concatenate `content` as a string: give them one."""
    content = message.get("content")
    if content is None:
        return {**message, "content": ""}
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return {**message, "content": "".join(parts)}
    return message


def _finish_reason(reason: str | None, had_tool_calls: bool) -> str:
    if reason == "function_call":
        reason = "tool_calls"
    if had_tool_calls and reason in (None, "stop"):
        reason = "tool_calls"
    return reason if reason in _FINISH_REASONS else "stop"


def _engine_error(exc: BaseException) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    message = str(exc) or type(exc).__name__
    if "exceed context window" in message:
        return EngineError(f"llama.cpp: {message}", code="context_length_exceeded")
    return EngineError(f"llama.cpp generation failed: {message}", code="engine_error")


def _hub_download(repo_id: str, pattern: str | None, *, cache_dir: Any = None) -> Path:
    """Find the GGUF `pattern` names in `repo_id` and download it (and its other shards) into
    huggingface-hub's cache, or find it there when offline / the hub is unreachable."""
    try:
        import huggingface_hub
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise EngineError(
            f"{SETTING}={repo_id!r} looks like a model-hub id, and downloading needs "
            "huggingface-hub: pip install 'parley[embedded]', or set it to a local .gguf path.",
            code="dependency_missing",
        ) from exc
    where = f"{repo_id}:{pattern}" if pattern else repo_id
    offline = hub_offline()
    glob = _as_glob(pattern)

    def fail(why: str, exc: BaseException | None = None, *, retryable: bool = False) -> EngineError:
        detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        return EngineError(
            f"Could not get the model {where!r} from the model hub: {why}{detail}. "
            f"Set {SETTING} to a local .gguf path, or to a hub id 'owner/repo:file.gguf' that is "
            "already in the cache when offline.",
            code="model_not_found",
            retryable=retryable,
        )

    # 1. Which file(s)?
    names: list[str] | None = None
    if glob is None:
        names = [pattern]  # type: ignore[list-item]
    elif not offline:
        try:
            names = huggingface_hub.HfApi().list_repo_files(repo_id)
        except Exception as exc:
            if _is_not_found(exc):
                raise fail("no such repository (or it is private/gated)", exc) from exc
            logger.warning("listing %s on the hub failed (%s); trying the local cache", repo_id, exc)
    if names is None:  # offline or unreachable: look in the cache
        try:
            snapshot = huggingface_hub.snapshot_download(
                repo_id, allow_patterns=["*.gguf"], local_files_only=True, cache_dir=cache_dir
            )
            names = [str(p.relative_to(snapshot)) for p in Path(snapshot).rglob("*.gguf")]
        except Exception as exc:
            raise fail(
                "the hub is unreachable" + (" (HF_HUB_OFFLINE is set)" if offline else "")
                + " and no matching file is in the local cache",
                exc,
                retryable=not offline,
            ) from exc
    files = _match(names, glob) if glob is not None else names
    if not files:
        ggufs = [n for n in names if n.lower().endswith(".gguf")]
        raise fail(f"no file matches {pattern or '*.gguf'!r}; GGUF files there: {ggufs[:20]}")
    if len(files) > 1:
        shards = [f for f in files if _SHARD.search(f)]
        if len(shards) != len(files) or len({_SHARD.sub("", f) for f in shards}) != 1:
            raise fail(f"{len(files)} files match {pattern or '*.gguf'!r}: {files[:20]}; name one")
    files.sort()

    # 2. Download (or find in the cache) each file; llama.cpp loads the other shards by itself.
    paths = []
    for name in files:
        try:
            paths.append(
                Path(
                    hf_hub_download(
                        repo_id, name, cache_dir=cache_dir, local_files_only=offline
                    )
                )
            )
        except Exception as exc:
            if _is_not_found(exc) and not offline:
                raise fail(f"{name!r} is not in the repository", exc) from exc
            raise fail(
                ("HF_HUB_OFFLINE is set and the file is not in the local cache" if offline
                 else "download failed (is the hub reachable?)"),
                exc,
                retryable=not offline,
            ) from exc
    return paths[0]


def _as_glob(pattern: str | None) -> str | None:
    """None for an exact file name; otherwise a case-insensitive glob.  A bare quantization tag
    (``Q4_K_M``, as in llama.cpp's ``-hf owner/repo:Q4_K_M``) means ``*Q4_K_M*.gguf``."""
    if pattern is None or pattern == "":
        return "*.gguf"
    if any(c in pattern for c in "*?["):
        return pattern
    if pattern.lower().endswith(".gguf"):
        return None
    return f"*{pattern}*.gguf"


def _match(names: list[str], glob: str) -> list[str]:
    glob_l = glob.lower()
    out = []
    for name in names:
        low = name.lower()
        if fnmatch.fnmatchcase(low, glob_l) or fnmatch.fnmatchcase(low.rsplit("/", 1)[-1], glob_l):
            out.append(name)
    # A sharded model matches once per shard: keep them all (the caller loads the first).
    return out


def _is_not_found(exc: BaseException) -> bool:
    kind = type(exc).__name__
    return kind in {"RepositoryNotFoundError", "EntryNotFoundError", "RemoteEntryNotFoundError",
                    "GatedRepoError", "RevisionNotFoundError"}


__all__ = ["LlamaCppLLM"]
