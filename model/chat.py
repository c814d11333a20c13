"""The Llama 2 chat format exactly as Meta's reference builds it (llama/generation.py, chat_completion).

The format is defined here once, as text turns, so that the dataset export (text with "<s>"/"</s>")
and the tokenizer (real BOS/EOS ids, `Tokenizer.encode_dialog`) cannot drift apart:

- a system message is merged into the first user turn as "<<SYS>>\n{system}\n<</SYS>>\n\n{user}";
- each finished turn is BOS + "[INST] {user.strip()} [/INST] {answer.strip()} " + EOS;
- the open (last) user turn is BOS + "[INST] {user.strip()} [/INST]".
Like the reference, messages that contain the control tags are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")
BOS_TEXT, EOS_TEXT = "<s>", "</s>"


# The same format as a Jinja chat template (the `tokenizer.chat_template` convention of transformers and GGUF),
# for servers that format chat messages themselves: the GGUF export writes it, so llama-cpp-python's server
# builds the prompts that `chat_text` builds (tests/model/test_model_gguf.py renders both and compares).
LLAMA2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- set system_message = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' -%}"
    "{%- else -%}"
    "{%- set loop_messages = messages -%}"
    "{%- set system_message = '' -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set content = (system_message + message['content']) if loop.first else message['content'] -%}"
    "{{- bos_token + '[INST] ' + content.strip() + ' [/INST]' -}}"
    "{%- else -%}"
    "{{- ' ' + message['content'].strip() + ' ' + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatFormatError(ValueError):
    """A dialog that the Llama 2 chat format cannot represent."""


@dataclass(frozen=True)
class Turn:
    """One turn, encoded as ONE string (BOS + prompt + answer + EOS) as Meta's reference does.

    `answer` is None for the open turn (a generation prompt: BOS + prompt, no EOS). Tokenizers encode
    `prompt + answer` in one call and mark as trained the ids past those of `prompt` alone (SentencePiece
    gives the prompt's ids as a prefix at the "[/INST]" boundary).
    """

    prompt: str
    answer: str | None


def _check(messages: list[Message]) -> list[Message]:
    if not messages:
        raise ChatFormatError("empty dialog")
    for m in messages:
        if any(tag in m["content"] for tag in SPECIAL_TAGS):
            raise ChatFormatError(f"a {m['role']} message contains one of {SPECIAL_TAGS}")
    if messages[0]["role"] == "system":
        if len(messages) < 2:
            raise ChatFormatError("a system message must be followed by a user message")
        merged = B_SYS + messages[0]["content"] + E_SYS + messages[1]["content"]
        messages = [{"role": messages[1]["role"], "content": merged}, *messages[2:]]
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ChatFormatError(f"message {i} has role {m['role']!r}, expected {expected!r} (user/assistant alternate)")
    return messages


def chat_turns(messages: list[Message]) -> list[Turn]:
    """Turns for a dialog. Ending with an assistant message gives a training example; ending with a
    user message gives a generation prompt (the last turn is open: no answer, no EOS)."""
    messages = _check(messages)
    turns = [
        Turn(f"{B_INST} {user['content'].strip()} {E_INST}", f" {answer['content'].strip()} ")
        for user, answer in zip(messages[::2], messages[1::2])
    ]
    if len(messages) % 2 == 1:
        turns.append(Turn(f"{B_INST} {messages[-1]['content'].strip()} {E_INST}", None))
    return turns


def chat_text(messages: list[Message]) -> str:
    """The dialog as one string with literal "<s>" and "</s>" where BOS and EOS go."""
    return "".join(
        BOS_TEXT + t.prompt + ("" if t.answer is None else t.answer + EOS_TEXT) for t in chat_turns(messages)
    )


def prompt_answer_text(user: str, answer: str, system: str | None = None) -> tuple[str, str]:
    """A single-turn example split at the "[/INST]" boundary: (prompt text, answer text), "<s>"/"</s>" included."""
    messages: list[Message] = ([{"role": "system", "content": system}] if system else [])
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    (turn,) = chat_turns(messages)
    assert turn.answer is not None
    return BOS_TEXT + turn.prompt, turn.answer + EOS_TEXT
