"""GGUF export: one file with weights, shapes and tokenizer that llama.cpp (llama-cpp-python's server,
Ollama) loads and serves.

Written with `gguf`, llama.cpp's own Python writer, under its LLAMA architecture. llama.cpp rotates
adjacent pairs like Meta's reference, so the tensors go out in the Meta layout `model/` holds in memory:
only the names change (llama.cpp's convert_hf_to_gguf.py permutes HF's q/k rows back to this layout; a
checkpoint read with `load_state_dict` already is in it, HF or Meta). The tokenizer goes inside, because
llama.cpp tokenizes itself: SentencePiece pieces, scores and types (control pieces stay id-only,
user-defined ones are matched in text, as SentencePiece does), the special ids, Code Llama's infilling ids
when the vocabulary has them, and the Llama 2 chat template (model/chat.py), so that a server formats
chat turns exactly as `model.chat` does instead of its own variant of "[INST]".
f16/bf16 exports keep the 1-D tensors (the RMSNorm weights) in f32, as llama.cpp's converter does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from model.args import ModelArgs
from model.chat import LLAMA2_CHAT_TEMPLATE
from model.checkpoint import TOKENIZER_FILE, StateDict, load_state_dict, load_tokenizer
from model.tokenizer import Tokenizer
from selfinstruct.errors import UserError

Dtype = Literal["f32", "f16", "bf16"]
DTYPES: tuple[Dtype, ...] = ("f32", "f16", "bf16")

# Meta layer names -> llama.cpp's (gguf.MODEL_TENSOR members; the names come from gguf.TENSOR_NAMES)
_LAYER_TENSORS = {
    "attention.wq": "ATTN_Q",
    "attention.wk": "ATTN_K",
    "attention.wv": "ATTN_V",
    "attention.wo": "ATTN_OUT",
    "feed_forward.w1": "FFN_GATE",
    "feed_forward.w3": "FFN_UP",
    "feed_forward.w2": "FFN_DOWN",
    "attention_norm": "ATTN_NORM",
    "ffn_norm": "FFN_NORM",
}
_TOP_TENSORS = {"tok_embeddings": "TOKEN_EMBD", "norm": "OUTPUT_NORM", "output": "OUTPUT"}
# Vocabulary rows past the tokenizer's pieces (a model whose embedding is larger than its tokenizer):
# llama.cpp needs one token per row; its converter pads the same way.
_PAD_SCORE = -1000.0


def export_gguf(src: str | Path, dst: str | Path, dtype: Dtype = "f32",
                tokenizer_path: str | Path | None = None, name: str | None = None) -> Path:
    """Write the Meta or HF checkpoint in `src` as one GGUF file `dst` (a directory gets model.gguf)."""
    import gguf  # noqa: F401 - fail here, before the weights are read, when the package is missing

    src = Path(src)
    if tokenizer_path is None:
        tokenizer_path = src / TOKENIZER_FILE
        if not tokenizer_path.is_file():
            raise UserError(f"{src} has no {TOKENIZER_FILE}: GGUF needs the tokenizer inside; copy the "
                            f"{TOKENIZER_FILE} the model was trained with into {src} or pass --tokenizer FILE")
    tokenizer = load_tokenizer(tokenizer_path)
    args, state = load_state_dict(src)
    dst = Path(dst)
    if dst.is_dir():
        dst = dst / "model.gguf"
    return write_gguf(state, args, tokenizer, dst, dtype=dtype, name=name or src.resolve().name)


def write_gguf(state: StateDict, args: ModelArgs, tokenizer: Tokenizer, dst: str | Path,
               dtype: Dtype = "f32", name: str = "selfinstruct") -> Path:
    """Write weights (Meta names and layout) with their shapes and tokenizer to the GGUF file `dst`."""
    import gguf

    if dtype not in DTYPES:
        raise UserError(f"unknown GGUF dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    writer = gguf.GGUFWriter(str(dst), arch)
    writer.add_name(name)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype])
    writer.add_vocab_size(args.vocab_size)
    writer.add_context_length(args.max_seq_len)
    writer.add_embedding_length(args.dim)
    writer.add_block_count(args.n_layers)
    writer.add_feed_forward_length(args.hidden_dim)
    writer.add_head_count(args.n_heads)
    writer.add_head_count_kv(args.kv_heads)
    writer.add_rope_dimension_count(args.head_dim)
    writer.add_rope_freq_base(args.rope_theta)
    writer.add_layer_norm_rms_eps(args.norm_eps)
    _add_tokenizer(writer, tokenizer, args.vocab_size)
    for meta_name, tensor in state.items():
        array, raw_dtype = _array(tensor, dtype)
        writer.add_tensor(gguf_tensor_name(meta_name), array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def gguf_tensor_name(meta_name: str) -> str:
    """llama.cpp's name for a Meta parameter name: layers.3.attention.wq.weight -> blk.3.attn_q.weight."""
    import gguf

    parts = meta_name.split(".")
    if parts[0] in _TOP_TENSORS and parts[1:] == ["weight"]:
        return gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[_TOP_TENSORS[parts[0]]]] + ".weight"
    if parts[0] == "layers" and len(parts) >= 4 and parts[-1] == "weight":
        member = _LAYER_TENSORS.get(".".join(parts[2:-1]))
        if member is not None:
            return gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[member]].format(bid=int(parts[1])) + ".weight"
    raise UserError(f"unexpected parameter name {meta_name!r}")


def _array(tensor: Tensor, dtype: Dtype) -> tuple[np.ndarray, object]:
    """The tensor as numpy for the writer, and its GGML type when numpy has none (bf16)."""
    import gguf

    tensor = tensor.detach().cpu()
    if tensor.ndim == 1 or dtype == "f32":
        return tensor.to(torch.float32).contiguous().numpy(), None
    if dtype == "f16":
        return tensor.to(torch.float16).contiguous().numpy(), None
    # numpy has no bfloat16: hand over the raw 16-bit words and name their type
    return tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy(), gguf.GGMLQuantizationType.BF16


def _add_tokenizer(writer, tokenizer: Tokenizer, vocab_size: int) -> None:
    import gguf
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.sp.serialized_model_proto())
    if len(proto.pieces) > vocab_size:
        raise UserError(f"{tokenizer.path or 'tokenizer'}: {len(proto.pieces)} pieces, more than the model's "
                        f"{vocab_size} embedding rows (wrong tokenizer for this checkpoint?)")
    kinds = proto.SentencePiece.Type
    types = {kinds.NORMAL: gguf.TokenType.NORMAL, kinds.UNKNOWN: gguf.TokenType.UNKNOWN,
             kinds.CONTROL: gguf.TokenType.CONTROL, kinds.USER_DEFINED: gguf.TokenType.USER_DEFINED,
             kinds.BYTE: gguf.TokenType.BYTE, kinds.UNUSED: gguf.TokenType.UNUSED}
    pieces = [p.piece for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    token_types = [types[p.type] for p in proto.pieces]
    for i in range(len(pieces), vocab_size):
        pieces.append(f"[PAD{i}]")
        scores.append(_PAD_SCORE)
        token_types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("llama")  # llama.cpp's name for a SentencePiece vocabulary
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_unk_token_id(tokenizer.sp.unk_id())
    if tokenizer.sp.pad_id() >= 0:
        writer.add_pad_token_id(tokenizer.sp.pad_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    writer.add_remove_extra_whitespaces(proto.normalizer_spec.remove_extra_whitespaces)
    if tokenizer.has_infilling:
        keys = gguf.Keys.Tokenizer
        for key, idx in ((keys.FIM_PRE_ID, tokenizer.prefix_id), (keys.FIM_SUF_ID, tokenizer.suffix_id),
                         (keys.FIM_MID_ID, tokenizer.middle_id), (keys.EOT_ID, tokenizer.eot_id)):
            writer.add_uint32(key, idx)
    writer.add_chat_template(LLAMA2_CHAT_TEMPLATE)
