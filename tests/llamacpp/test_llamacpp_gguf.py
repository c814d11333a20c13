"""GGUF exports in the real llama.cpp (llama-cpp-python): it loads them, tokenizes like model/'s tokenizer,
computes model/'s logits, and serves them over its OpenAI-compatible API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.chat import chat_text
from model.checkpoint import load, load_tokenizer

pytestmark = [pytest.mark.llamacpp, pytest.mark.timeout(120)]

# Code with indentation and tabs, unicode (accents, CJK, emoji: byte fallback), runs of spaces, newlines,
# the chat tags (ordinary text for both tokenizers), SentencePiece's own special strings as text, and "".
STRINGS = [
    "def add(a, b):\n    return a + b\n",
    "class Stack:\n\tdef push(self, x):\n\t\tself.items.append(x)  # two spaces before\n",
    "    leading spaces and trailing   ",
    "naïve café, Größe, 日本語, 🙂 and ☺",
    "a  b   c    d\n\n\nnewlines\r\nwindows",
    "[INST] Write a function. [/INST]",
    "[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi [/INST] Hello ",
    "<s> and </s> as text, ▁<PRE> too",
    "assert f([1, 2, 3]) == 6\n",
    " ",
    "",
]


def _llama(llama_cpp, path, n_ctx: int = 256):
    """llama.cpp with an f32 KV cache: its default f16 cache alone moves logits by ~1e-3 (measured 1.5e-3)."""
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def _logits_both(llama_cpp, made, text: str) -> tuple[np.ndarray, np.ndarray]:
    tok = load_tokenizer(made.checkpoint)
    ids = tok.encode(text, bos=True)
    with torch.no_grad():
        ours = load(made.checkpoint)(torch.tensor([ids]))[0].numpy()
    llm = _llama(llama_cpp, made.gguf)
    try:
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    return ours, theirs


def test_tokenization_equals_model_tokenizer(llama_cpp, gguf_model) -> None:
    """Like for like: raw text with special=False on both sides. SentencePiece adds its dummy leading space
    itself and llama.cpp does too (the GGUF's add_space_prefix), so neither side gets a hand-made space;
    "<s>" in text stays text on both. With add_bos llama.cpp prepends BOS, which is encode(bos=True)."""
    made = gguf_model("tiny")
    tok = load_tokenizer(made.checkpoint)
    llm = _llama(llama_cpp, made.gguf)
    try:
        for text in STRINGS:
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text), text
            assert llm.tokenize(text.encode(), add_bos=True, special=False) == tok.encode(text, bos=True), text
            # llama.cpp decodes ids as a continuation: a leading "▁" stays a space (decode_continuation)
            ids = tok.encode(text)
            assert llm.detokenize(ids).decode() == tok.decode_continuation(ids), text
        assert (llm.token_bos(), llm.token_eos()) == (tok.bos_id, tok.eos_id)
        vocab = llm._model.vocab
        assert llama_cpp.llama_vocab_fim_pre(vocab) == tok.prefix_id
        assert llama_cpp.llama_vocab_fim_mid(vocab) == tok.middle_id
        assert llama_cpp.llama_vocab_is_eog(vocab, tok.eot_id)
    finally:
        llm.close()


def test_chat_prompt_tokens_equal_encode_dialog(llama_cpp, gguf_model) -> None:
    """The server renders the GGUF's chat template to text with literal "<s>"/"</s>" and tokenizes it with
    special=True (those become BOS/EOS); that must give the ids `Tokenizer.encode_dialog` gives."""
    made = gguf_model("tiny")
    tok = load_tokenizer(made.checkpoint)
    dialog = [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "Add two numbers."},
              {"role": "assistant", "content": "def add(a, b):\n    return a + b"},
              {"role": "user", "content": "Now three."}]
    llm = _llama(llama_cpp, made.gguf)
    try:
        ids = llm.tokenize(chat_text(dialog).encode(), add_bos=False, special=True)
    finally:
        llm.close()
    assert ids == tok.encode_dialog(dialog)[0]


@pytest.mark.parametrize(("preset", "fmt"), [("tiny", "hf"), ("tiny-mha", "hf"), ("tiny-code", "meta")])
def test_f32_logits_match_model_forward(llama_cpp, gguf_model, preset: str, fmt: str) -> None:
    """tiny: GQA (4 heads, 2 kv heads), from an HF checkpoint (q/k rows permuted back); tiny-mha: multi-head;
    tiny-code: GQA with Code Llama's rope_theta 1e6, from a Meta checkpoint. Wrong rotary layout or theta
    shows as O(1) differences."""
    made = gguf_model(preset, fmt)
    text = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n" * 2
    ours, theirs = _logits_both(llama_cpp, made, text)
    assert ours.shape == theirs.shape and ours.std() > 0.5
    print(f"{preset}: max |logit difference| {np.abs(ours - theirs).max():.2e}, logit std {ours.std():.2f}")
    assert np.abs(ours - theirs).max() < 1e-4  # measured ~2e-6


def test_f16_logits_stay_close(llama_cpp, gguf_model) -> None:
    made = gguf_model("tiny", "hf", "f16")
    ours, theirs = _logits_both(llama_cpp, made, "def add(a, b):\n    return a + b\n")
    print(f"f16: max |logit difference| {np.abs(ours - theirs).max():.2e}, logit std {ours.std():.2f}")
    assert np.abs(ours - theirs).max() < 0.02  # measured ~3e-3


@pytest.mark.timeout(180)
def test_server_answers_completions_and_chat(llamacpp_server, gguf_model) -> None:
    """Both OpenAI endpoints answer; the prompt token counts show the server tokenized the raw prompt and
    formatted the chat messages exactly as model/ does (the GGUF's chat template, not llama-cpp-python's own
    "llama-2" format, which spaces [INST] differently)."""
    import httpx

    tok = load_tokenizer(gguf_model("tiny").checkpoint)

    with httpx.Client(base_url=llamacpp_server.base_url, timeout=60) as client:
        models = client.get("/models").json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
        body = {"model": "tiny", "prompt": "[INST] Write a function. [/INST]", "max_tokens": 8,
                "temperature": 0.8, "top_p": 0.95, "seed": 1, "n": 3, "stop": ["[/PYTHON]"]}
        completion = client.post("/completions", json=body).json()
        # llama-cpp-python's server ignores n: one choice per request (the OpenAI backend tops up)
        assert len(completion["choices"]) == 1
        assert isinstance(completion["choices"][0]["text"], str)
        assert completion["usage"]["prompt_tokens"] == len(tok.encode(body["prompt"], bos=True))
        again = client.post("/completions", json=body).json()
        assert again["choices"][0]["text"] == completion["choices"][0]["text"]  # same seed, same text
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        chat = client.post("/chat/completions", json={"model": "tiny", "max_tokens": 8, "temperature": 0.0,
                                                      "messages": messages}).json()
        assert chat["choices"][0]["message"]["role"] == "assistant"
        assert isinstance(chat["choices"][0]["message"]["content"], str)
        assert chat["usage"]["prompt_tokens"] == len(tok.encode_dialog_prompt(messages))
