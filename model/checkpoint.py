"""Checkpoint I/O: Meta (`params.json` + `consolidated.*.pth`) and Hugging Face Llama directories.

In memory everything is in Meta's layout (`model.transformer` names, adjacent-pair rotary rows). The
HF layout differs in names and in the row order of wq/wk (HF rotates halves, so converters permute the
rows: REFERENCE.md). `load(path)` accepts either format; `save_hf` writes what `transformers` and vLLM
load; `save_meta` writes what Meta's reference code loads. Anything wrong with a checkpoint (missing or
malformed file, a tensor whose shape disagrees with the config) is a `UserError` naming the file.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from model.args import ModelArgs
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from selfinstruct.errors import UserError

Format = Literal["meta", "hf"]
StateDict = dict[str, Tensor]

HF_INDEX = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.model"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

_HF_LAYER_NAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_HF_TOP_NAMES = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}
# Meta model-parallel shards: these concatenate along dim 1, other matrices along dim 0, norms replicate.
_META_DIM1 = ("tok_embeddings.weight", "attention.wo.weight", "feed_forward.w2.weight")


# ---------------------------------------------------------------------------------------------------
# format detection and the public entry points


def detect_format(path: str | Path) -> Format:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    if not path.is_dir():
        raise UserError(f"{path}: a checkpoint is a directory (Meta: params.json + consolidated.*.pth; HF: config.json + *.safetensors)")
    if (path / "params.json").is_file():
        return "meta"
    if (path / "config.json").is_file():
        return "hf"
    raise UserError(f"{path}: neither params.json (Meta) nor config.json (Hugging Face) found")


def load_state_dict(path: str | Path) -> tuple[ModelArgs, StateDict]:
    """Shapes and weights (Meta names and layout) from a Meta or HF checkpoint directory, shape-checked."""
    path = Path(path)
    if detect_format(path) == "meta":
        args, state, origin = _read_meta(path)
    else:
        args, state, origin = _read_hf(path)
    _check_shapes(args, {name: tuple(t.shape) for name, t in state.items()}, origin)
    return args, state


def inspect_checkpoint(path: str | Path) -> tuple[Format, ModelArgs, str]:
    """Format, shapes and weight dtype of a checkpoint, shape-checked without reading HF weights
    (safetensors headers only) or copying Meta ones (memory-mapped): `model info` on a 70B is instant."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "meta":
        args, state, origin = _read_meta(path)
        shapes = {name: tuple(t.shape) for name, t in state.items()}
        dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    else:
        args, shapes, origin, dtype = _read_hf_headers(path)
    _check_shapes(args, shapes, origin)
    return fmt, args, dtype


def load(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
         **model_kwargs: Any) -> Transformer:
    """A `Transformer` in eval mode with the weights of the Meta or HF checkpoint in `path`."""
    args, state = load_state_dict(path)
    with torch.device("meta"):
        model = Transformer(args, **model_kwargs)
    model.load_state_dict(state, assign=True)
    del state  # the model now owns the tensors: each is freed as soon as `to` has converted it
    return model.to(device=device, dtype=dtype).eval()


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint directory (its tokenizer.model), or of a tokenizer.model file."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{file}: tokenizer model not found")
    return Tokenizer(file)


def save_hf(model: Transformer | StateDict, out_dir: str | Path, args: ModelArgs | None = None,
            tokenizer_path: str | Path | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Write a Hugging Face Llama directory: sharded safetensors + index, config, generation config, tokenizer."""
    from safetensors.torch import save_file

    state, args = _state_and_args(model, args)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_state = meta_to_hf(state, args)
    shards = _plan_shards(hf_state, max_shard_bytes)
    weight_map: dict[str, str] = {}
    for i, names in enumerate(shards, start=1):
        filename = "model.safetensors" if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: hf_state[n].detach().cpu().contiguous() for n in names}, str(out / filename),
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, filename))
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in hf_state.values())
        _write_json(out / HF_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    dtype = next(iter(state.values())).dtype
    _write_json(out / "config.json", hf_config(args, dtype))
    _write_json(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False})
    if tokenizer_path is not None:
        _copy_tokenizer(tokenizer_path, out)
        _write_json(out / "tokenizer_config.json", {
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "add_bos_token": True, "add_eos_token": False, "legacy": True,
            "model_max_length": args.max_seq_len, "clean_up_tokenization_spaces": False,
        })
    return out


def save_meta(model: Transformer | StateDict, out_dir: str | Path, args: ModelArgs | None = None,
              tokenizer_path: str | Path | None = None) -> Path:
    """Write a Meta checkpoint directory: params.json + consolidated.00.pth (+ tokenizer.model)."""
    state, args = _state_and_args(model, args)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, out / "consolidated.00.pth")
    _write_json(out / "params.json", meta_params(args))
    if tokenizer_path is not None:
        _copy_tokenizer(tokenizer_path, out)
    return out


def convert(src: str | Path, dst: str | Path, to: Format) -> Path:
    """Rewrite the checkpoint in `src` as format `to` in `dst`, bit-exact, tokenizer included."""
    args, state = load_state_dict(src)
    tokenizer = Path(src) / TOKENIZER_FILE
    tokenizer_path = tokenizer if tokenizer.is_file() else None
    if to == "hf":
        return save_hf(state, dst, args, tokenizer_path)
    if to == "meta":
        return save_meta(state, dst, args, tokenizer_path)
    raise UserError(f"unknown checkpoint format {to!r}; use 'hf' or 'meta'")


# ---------------------------------------------------------------------------------------------------
# configs


def hf_config(args: ModelArgs, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": args.max_seq_len,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "torch_dtype": dtype_name,
    }


def args_from_hf_config(config: dict[str, Any], origin: str = "config.json") -> ModelArgs:
    try:
        if config.get("model_type", "llama") != "llama":
            raise UserError(f"{origin}: model_type {config['model_type']!r} is not a Llama model")
        dim, hidden = int(config["hidden_size"]), int(config["intermediate_size"])
        rope_theta = config.get("rope_theta")
        if rope_theta is None:  # transformers >= 5 nests it
            rope_theta = (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        common = dict(
            dim=dim, n_layers=int(config["num_hidden_layers"]), n_heads=int(config["num_attention_heads"]),
            n_kv_heads=config.get("num_key_value_heads"), vocab_size=int(config["vocab_size"]),
            norm_eps=float(config.get("rms_norm_eps", 1e-5)), rope_theta=float(rope_theta),
            max_seq_len=int(config.get("max_position_embeddings", 4096)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{origin}: malformed Llama config ({exc.__class__.__name__}: {exc})") from None
    if common["n_kv_heads"] == common["n_heads"]:
        common["n_kv_heads"] = None
    return ModelArgs(**common, **_ffn_rule_for(dim, hidden))


def _ffn_rule_for(dim: int, hidden: int) -> dict[str, Any]:
    """multiple_of / ffn_dim_multiplier that make Meta's rule give `hidden` (the published ones first)."""
    candidates = [dict(multiple_of=m, ffn_dim_multiplier=f)
                  for f in (None, 1.0, 1.3) for m in (256, 4096, 1024, 512, 128, 64, 32, 16, 8)]
    for candidate in candidates:
        if ModelArgs(dim=dim, n_heads=1, **candidate).hidden_dim == hidden:
            return candidate
    base = int(8 * dim / 3)
    if hidden >= base:
        return dict(multiple_of=hidden, ffn_dim_multiplier=None)
    return dict(multiple_of=1, ffn_dim_multiplier=(hidden + 0.5) / base)


def meta_params(args: ModelArgs) -> dict[str, Any]:
    """params.json as Meta writes it (no max_seq_len: Meta's loader passes that separately)."""
    params: dict[str, Any] = {
        "dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
        "multiple_of": args.multiple_of, "norm_eps": args.norm_eps, "vocab_size": args.vocab_size,
        "rope_theta": args.rope_theta,
    }
    if args.n_kv_heads is not None:
        params["n_kv_heads"] = args.n_kv_heads
    if args.ffn_dim_multiplier is not None:
        params["ffn_dim_multiplier"] = args.ffn_dim_multiplier
    return params


# ---------------------------------------------------------------------------------------------------
# layout conversion


def _permute_to_hf(w: Tensor, n_heads: int) -> Tensor:
    out, dim = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, dim).transpose(1, 2).reshape(out, dim)


def _permute_to_meta(w: Tensor, n_heads: int) -> Tensor:
    out, dim = w.shape
    return w.reshape(n_heads, 2, out // n_heads // 2, dim).transpose(1, 2).reshape(out, dim)


def meta_to_hf(state: StateDict, args: ModelArgs) -> StateDict:
    hf: StateDict = {}
    for name, tensor in state.items():
        hf_name = _hf_name(name)
        if name.endswith("attention.wq.weight"):
            tensor = _permute_to_hf(tensor, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = _permute_to_hf(tensor, args.kv_heads)
        hf[hf_name] = tensor
    return hf


def hf_to_meta(state: StateDict, args: ModelArgs) -> StateDict:
    meta_names = {_hf_name(n): n for n in _expected_shapes(args)}
    out: StateDict = {}
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = meta_names.get(hf_name, hf_name)
        if name.endswith("attention.wq.weight"):
            tensor = _permute_to_meta(tensor, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = _permute_to_meta(tensor, args.kv_heads)
        out[name] = tensor
    return out


def _hf_name(meta_name: str) -> str:
    top, _, rest = meta_name.partition(".")
    if top in _HF_TOP_NAMES:
        return f"{_HF_TOP_NAMES[top]}.{rest}"
    match = re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", meta_name)
    if match is None or match.group(2) not in _HF_LAYER_NAMES:
        raise UserError(f"unexpected parameter name {meta_name!r}")
    return f"model.layers.{match.group(1)}.{_HF_LAYER_NAMES[match.group(2)]}.weight"


# ---------------------------------------------------------------------------------------------------
# readers


def _read_meta(path: Path) -> tuple[ModelArgs, StateDict, dict[str, str]]:
    params_file = path / "params.json"
    params = _read_json(params_file)
    shard_files = sorted(path.glob("consolidated.*.pth"))
    if not shard_files:
        raise UserError(f"{path}: params.json found but no consolidated.*.pth weight files")
    shards = []
    for file in shard_files:
        try:
            shards.append(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem to fix
            raise UserError(f"{file}: cannot read weights ({_first_line(exc)})") from None
    state = _merge_meta_shards(shards, shard_files)
    origin = {name: str(shard_files[0] if len(shard_files) == 1 else path / "consolidated.*.pth") for name in state}
    if "tok_embeddings.weight" not in state:
        raise UserError(f"{shard_files[0]}: no tok_embeddings.weight (not a Llama checkpoint?)")
    if int(params.get("vocab_size", -1)) <= 0:  # Meta's Llama 2 release writes -1
        params["vocab_size"] = state["tok_embeddings.weight"].shape[0]
    params.setdefault("max_seq_len", 16384 if float(params.get("rope_theta", 1e4)) >= 1e6 else 4096)
    try:
        args = ModelArgs.from_dict(params)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{params_file}: malformed params ({exc})") from None
    return args, state, origin


def _merge_meta_shards(shards: list[StateDict], files: list[Path]) -> StateDict:
    names = [n for n in shards[0] if n != "rope.freqs"]
    for file, shard in zip(files[1:], shards[1:]):
        if set(n for n in shard if n != "rope.freqs") != set(names):
            raise UserError(f"{file}: holds different tensors than {files[0]}")
    if len(shards) == 1:
        return {n: shards[0][n] for n in names}
    merged: StateDict = {}
    for name in names:
        parts = [shard[name] for shard in shards]
        if parts[0].ndim == 1:
            merged[name] = parts[0]
        else:
            merged[name] = torch.cat(parts, dim=1 if name.endswith(_META_DIM1) else 0)
    return merged


def _read_hf(path: Path) -> tuple[ModelArgs, StateDict, dict[str, str]]:
    from safetensors.torch import load_file

    config_file = path / "config.json"
    args = args_from_hf_config(_read_json(config_file), str(config_file))
    files = _hf_weight_files(path)
    hf_state: StateDict = {}
    origin: dict[str, str] = {}
    for file in files:
        try:
            tensors = load_file(file) if file.suffix == ".safetensors" else torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem to fix
            raise UserError(f"{file}: cannot read weights ({_first_line(exc)})") from None
        hf_state.update(tensors)
        origin.update(dict.fromkeys(tensors, str(file)))
    state = hf_to_meta(hf_state, args)
    meta_names = {_hf_name(n): n for n in _expected_shapes(args)}
    return args, state, {meta_names.get(name, name): file for name, file in origin.items()}


def _read_hf_headers(path: Path) -> tuple[ModelArgs, dict[str, tuple[int, ...]], dict[str, str], str]:
    from safetensors import safe_open

    config_file = path / "config.json"
    args = args_from_hf_config(_read_json(config_file), str(config_file))
    meta_names = {_hf_name(n): n for n in _expected_shapes(args)}
    shapes: dict[str, tuple[int, ...]] = {}
    origin: dict[str, str] = {}
    dtype = "unknown"
    for file in _hf_weight_files(path):
        if file.suffix != ".safetensors":  # pickled .bin files have no header to read: load them
            _, state, bin_origin = _read_hf(path)
            first = next(iter(state.values()))
            return args, {n: tuple(t.shape) for n, t in state.items()}, bin_origin, str(first.dtype).removeprefix("torch.")
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    piece = handle.get_slice(name)
                    meta_name = meta_names.get(name, name)
                    shapes[meta_name] = tuple(piece.get_shape())
                    origin[meta_name] = str(file)
                    dtype = piece.get_dtype()
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem to fix
            raise UserError(f"{file}: cannot read weights ({_first_line(exc)})") from None
    return args, {n: s for n, s in shapes.items() if not n.endswith("rotary_emb.inv_freq")}, origin, _torch_dtype_name(dtype)


def _torch_dtype_name(safetensors_dtype: str) -> str:
    return {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(safetensors_dtype, safetensors_dtype)


def _hf_weight_files(path: Path) -> list[Path]:
    index = path / HF_INDEX
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index}: no weight_map")
        files = [path / name for name in dict.fromkeys(weight_map.values())]
        for file in files:
            if not file.is_file():
                raise UserError(f"{file}: listed in {HF_INDEX} but missing")
        return files
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise UserError(f"{path}: config.json found but no *.safetensors weight files")
    return files


# ---------------------------------------------------------------------------------------------------
# checks and small helpers


def _expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    kv_dim = args.kv_heads * args.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "tok_embeddings.weight": (args.vocab_size, args.dim),
        "norm.weight": (args.dim,),
        "output.weight": (args.vocab_size, args.dim),
    }
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention.wq.weight": (args.dim, args.dim),
            p + "attention.wk.weight": (kv_dim, args.dim),
            p + "attention.wv.weight": (kv_dim, args.dim),
            p + "attention.wo.weight": (args.dim, args.dim),
            p + "feed_forward.w1.weight": (args.hidden_dim, args.dim),
            p + "feed_forward.w3.weight": (args.hidden_dim, args.dim),
            p + "feed_forward.w2.weight": (args.dim, args.hidden_dim),
            p + "attention_norm.weight": (args.dim,),
            p + "ffn_norm.weight": (args.dim,),
        }
    return shapes


def _check_shapes(args: ModelArgs, shapes: dict[str, tuple[int, ...]], origin: dict[str, str]) -> None:
    expected = _expected_shapes(args)
    where = next(iter(origin.values()), "checkpoint")
    missing = [n for n in expected if n not in shapes]
    if missing:
        raise UserError(f"{where}: missing {len(missing)} tensor(s), e.g. {missing[0]}")
    unexpected = [n for n in shapes if n not in expected]
    if unexpected:
        raise UserError(f"{origin.get(unexpected[0], where)}: unexpected tensor {unexpected[0]}")
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise UserError(f"{origin.get(name, where)}: {name} has shape {shapes[name]}, the config says {shape}")


def _state_and_args(model: Transformer | StateDict, args: ModelArgs | None) -> tuple[StateDict, ModelArgs]:
    if isinstance(model, Transformer):
        return model.state_dict(), args or model.args
    if args is None:
        raise ValueError("saving a bare state dict needs its ModelArgs")
    return model, args


def _plan_shards(state: StateDict, max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise UserError(f"{file}: not found")
    try:
        value = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: malformed JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f"{file}: expected a JSON object")
    return value


def _write_json(file: Path, value: dict[str, Any]) -> None:
    file.write_text(json.dumps(value, indent=2) + "\n")


def _copy_tokenizer(src: str | Path, out: Path) -> None:
    src = Path(src)
    src = src / TOKENIZER_FILE if src.is_dir() else src
    if src.resolve() != (out / TOKENIZER_FILE).resolve():
        shutil.copyfile(src, out / TOKENIZER_FILE)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0]}" if text else exc.__class__.__name__
