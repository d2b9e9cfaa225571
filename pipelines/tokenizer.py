"""Text-encoder tokenizers from the files shipped beside the weights, with the `tokenizers` and
`sentencepiece` libraries (never transformers, never hand-rolled).

- `load_tokenizer(path)` → `Tokenizer`. `path` is one of:
  a directory (or file) with `tokenizer.json` (any fast tokenizer: T5, UMT5, CLIP…);
  a directory with `vocab.json` + `merges.txt` (CLIP BPE, built as transformers' `CLIPConverter` does);
  a directory with `spiece.model`, or any `*.model` file (sentencepiece, T5 convention: `</s>` appended,
  no BOS); a `.safetensors` file holding a uint8 `spiece_model` tensor (ComfyUI's UMT5 files).
  A diffusers pipeline's `tokenizer/` / `tokenizer_2/` folder is such a directory. `tokenizer.json` wins
  over the others in one directory, as in transformers. Special tokens and `model_max_length` come from
  `tokenizer_config.json` / `special_tokens_map.json` when present.
- `tokenizer(prompts, max_length)` → `{"input_ids", "attention_mask"}` int32 `[B, L]`, truncated and
  padded as diffusers' Flux / Wan pipelines ask transformers for (`padding="max_length"`,
  `truncation=True`, special tokens added and kept by truncation: CLIP `<|startoftext|>…<|endoftext|>`,
  T5 `…</s>`).
- `check_vocab(tokenizer, embedding_rows, where)`: a tokenizer that can emit ids past an embedding is a
  one-line ValueError naming `where`.
- `wan_prompt_clean(text)`: diffusers' WanPipeline `prompt_clean`, applied before UMT5 tokenisation.

Imports numpy (and tokenizers / sentencepiece / safetensors when a tokenizer is loaded); never torch.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

TOKENIZER_JSON = "tokenizer.json"
BPE_FILES = ("vocab.json", "merges.txt")
SPIECE_MODEL = "spiece.model"
SPIECE_TENSOR = "spiece_model"  # ComfyUI: the sentencepiece proto as a uint8 tensor in the UMT5 file
LOOKED_FOR = f"{TOKENIZER_JSON}, {' + '.join(BPE_FILES)}, {SPIECE_MODEL}"

# Defaults when no tokenizer_config.json says otherwise (CLIP's positions; T5 / UMT5 as the pipelines
# use them). transformers writes int(1e30) for "no limit"; a value past this counts as absent.
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512
_NO_LIMIT = 1_000_000

# transformers' CLIPTokenizer pipeline (tokenization_clip.py, same as convert_slow_tokenizer.CLIPConverter).
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CLIP_DEFAULTS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                  "unk_token": "<|endoftext|>"}
_T5_DEFAULTS = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")

Encode = Callable[[list[str], "int | None"], list[list[int]]]


class Tokenizer:
    """A loaded tokenizer. Attributes: `pad_token_id`, `eos_token_id`, `bos_token_id` (None for T5),
    `vocab_size` (ids it can emit, added tokens included), `model_max_length` (from the files),
    `num_special_tokens` (added to every prompt), `kind` ("tokenizer.json" | "clip-bpe" |
    "sentencepiece"), `path`."""

    def __init__(self, encode: Encode, *, kind: str, path: str | os.PathLike, pad_token_id: int,
                 eos_token_id: int | None, bos_token_id: int | None, vocab_size: int, model_max_length: int,
                 num_special_tokens: int):
        self._encode = encode
        self.kind, self.path = kind, str(path)
        self.pad_token_id, self.eos_token_id, self.bos_token_id = pad_token_id, eos_token_id, bos_token_id
        self.vocab_size, self.model_max_length = vocab_size, model_max_length
        self.num_special_tokens = num_special_tokens

    def __repr__(self) -> str:
        return (f"Tokenizer({self.kind}, {self.path!r}, vocab_size={self.vocab_size}, "
                f"pad={self.pad_token_id}, eos={self.eos_token_id}, bos={self.bos_token_id})")

    def __call__(self, prompts: str | Sequence[str], max_length: int, *, padding: str = "max_length",
                 truncation: bool = True) -> dict[str, np.ndarray]:
        """Tokenise like `transformers_tokenizer(prompts, max_length=…, padding=…, truncation=…)`.

        Args:
          prompts: one prompt or a list of B prompts.
          max_length: the token length L (special tokens included).
          padding: "max_length" (every row L tokens) or "longest" (rows as long as the longest, ≤ L).
          truncation: cut prompts to L tokens, keeping the special tokens at the ends.
        Returns:
          `input_ids` and `attention_mask` (1 on tokens, 0 on padding), int32 `[B, L]`.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"prompts must be strings; got {', '.join(sorted(set(bad)))}")
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding={padding!r}: use 'max_length' or 'longest'")
        if max_length < max(self.num_special_tokens, 1):
            raise ValueError(f"max_length={max_length} leaves no room: every prompt takes "
                             f"{self.num_special_tokens} special token(s) ({self.path})")
        rows = self._encode(prompts, max_length if truncation else None)
        longest = max((len(r) for r in rows), default=0)
        if padding == "max_length" and longest > max_length:
            raise ValueError(f"a prompt is {longest} tokens, longer than max_length={max_length}; "
                             "pass truncation=True or padding='longest'")
        length = max_length if padding == "max_length" else longest
        ids = np.full((len(rows), length), self.pad_token_id, np.int32)  # [B, L]
        mask = np.zeros((len(rows), length), np.int32)  # [B, L]
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def check_vocab(tokenizer: Tokenizer, embedding_rows: int, where: str | os.PathLike) -> None:
    """ValueError (one line, naming `where`) when the tokenizer can emit ids ≥ `embedding_rows`."""
    if tokenizer.vocab_size > embedding_rows:
        raise ValueError(f"{where}: the tokenizer ({tokenizer.path}) has {tokenizer.vocab_size} tokens but the "
                         f"embedding has {embedding_rows} rows: tokenizer and weights do not belong together")


# ----------------------------------------------------------------------------- loading


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer in `path` (a directory or a file; see the module docstring for the kinds)."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            return _spiece(read_spiece_tensor(path), path, None)
        if path.suffix == ".model":
            return _spiece(path.read_bytes(), path, path.parent)
        if path.name == TOKENIZER_JSON:
            return _from_tokenizer_json(path.parent)
        if path.name in BPE_FILES:
            return _clip_bpe(path.parent)
        raise ValueError(f"{path}: not a tokenizer file (expected {LOOKED_FOR}, a *.model sentencepiece file "
                         f"or a .safetensors holding a `{SPIECE_TENSOR}` tensor)")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory (looking for a tokenizer: {LOOKED_FOR})")
    if (path / TOKENIZER_JSON).is_file():
        return _from_tokenizer_json(path)
    if any((path / name).is_file() for name in BPE_FILES):
        return _clip_bpe(path)
    if (path / SPIECE_MODEL).is_file():
        return _spiece((path / SPIECE_MODEL).read_bytes(), path / SPIECE_MODEL, path)
    subfolders = sorted(p.name for p in path.glob("tokenizer*") if p.is_dir())
    hint = f"; this looks like a diffusers pipeline: pass one of its folders {subfolders}" if subfolders else ""
    raise FileNotFoundError(f"{path}: no tokenizer files (looked for {LOOKED_FOR}){hint}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None


def _specials(directory: Path | None,
              defaults: dict[str, str]) -> tuple[dict[str, str], set[str], dict[str, bool], int | None]:
    """(role → token text, the roles the files name, token text → normalized flag, model_max_length) from
    tokenizer_config.json and special_tokens_map.json (the map wins, as in transformers), else `defaults`.
    A token the files give anywhere as a plain string, or do not give at all, is not normalised
    (transformers' AddedToken default); else the files' flag."""
    config = _read_json(directory / "tokenizer_config.json") if directory else {}
    merged = {**config, **(_read_json(directory / "special_tokens_map.json") if directory else {})}
    tokens, named, normalized = dict(defaults), set(), {}
    for role in _ROLES:
        value = merged.get(role, defaults.get(role))
        text = value.get("content") if isinstance(value, dict) else value
        if text is None:
            tokens.pop(role, None)
            continue
        tokens[role] = text
        for source in (config.get(role), merged.get(role)):
            if source is not None:
                named.add(role)
                flag = bool(source.get("normalized", False)) if isinstance(source, dict) else False
                normalized[text] = normalized.get(text, True) and flag
    limit = config.get("model_max_length")
    limit = int(limit) if isinstance(limit, (int, float)) and 0 < limit <= _NO_LIMIT else None
    return tokens, named, normalized, limit


def _hf_encode(tok) -> Encode:
    """Encode with a `tokenizers.Tokenizer`: content truncated to leave room for the post-processor's
    special tokens, then those added (what transformers' `truncation=True` does)."""
    tok.no_padding()
    tok.no_truncation()  # a tokenizer.json may carry its own; we truncate per call instead
    specials = tok.num_special_tokens_to_add(False)

    def encode(prompts: list[str], max_length: int | None) -> list[list[int]]:
        out = []
        for enc in tok.encode_batch(prompts, add_special_tokens=False):
            if max_length is not None:
                enc.truncate(max_length - specials)
            out.append(tok.post_process(enc).ids)
        return out

    return encode


def _token_id(tok, text: str | None, directory: Path, role: str) -> int | None:
    if text is None:
        return None
    token_id = tok.token_to_id(text)
    if token_id is None:
        raise ValueError(f"{directory}: the {role} {text!r} of the tokenizer files is not in its vocabulary")
    return token_id


def _from_tokenizer_json(directory: Path) -> Tokenizer:
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    file = directory / TOKENIZER_JSON
    try:
        tok = HFTokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise ValueError(f"{file}: not a tokenizers JSON file ({e})") from None
    vocab = tok.get_vocab(with_added_tokens=True)
    clip = "<|endoftext|>" in vocab
    tokens, named, normalized, limit = _specials(directory, _CLIP_DEFAULTS if clip else _T5_DEFAULTS)
    tokens = {role: text for role, text in tokens.items() if role in named or text in vocab}
    if "pad_token" not in tokens:
        raise ValueError(f"{directory}: no pad_token in the tokenizer files, no {_T5_DEFAULTS['pad_token']!r} / "
                         f"{_CLIP_DEFAULTS['pad_token']!r} in the vocabulary; name one in special_tokens_map.json")
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    # transformers registers the files' special tokens even when tokenizer.json does not list them
    missing = [AddedToken(t, normalized=normalized.get(t, False), special=True)
               for t in dict.fromkeys(tokens.values()) if t not in added]
    if missing:
        tok.add_special_tokens(missing)
    return Tokenizer(
        _hf_encode(tok), kind="tokenizer.json", path=file,
        pad_token_id=_token_id(tok, tokens["pad_token"], directory, "pad_token"),
        eos_token_id=_token_id(tok, tokens.get("eos_token"), directory, "eos_token"),
        bos_token_id=_token_id(tok, tokens.get("bos_token"), directory, "bos_token"),
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        model_max_length=limit or (CLIP_MAX_LENGTH if clip else T5_MAX_LENGTH),
        num_special_tokens=tok.num_special_tokens_to_add(False))


def _clip_bpe(directory: Path) -> Tokenizer:
    """CLIP's byte-level BPE from vocab.json + merges.txt, as transformers' CLIPTokenizer builds it."""
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE

    missing = [name for name in BPE_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: a CLIP BPE tokenizer needs {' + '.join(BPE_FILES)}; "
                                f"missing {', '.join(missing)}")
    tokens, _, normalized, limit = _specials(directory, _CLIP_DEFAULTS)
    try:
        vocab, merges = BPE.read_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise ValueError(f"{directory}: vocab.json / merges.txt not readable as BPE ({e})") from None
    tok = HFTokenizer(BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="</w>",
                          fuse_unk=False, unk_token=tokens.get("unk_token")))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=normalized.get(t, False), special=True)
                            for t in dict.fromkeys(tokens.values())])
    ids = {role: _token_id(tok, text, directory, role) for role, text in tokens.items()}
    if ids.get("bos_token") is None or ids.get("eos_token") is None:
        raise ValueError(f"{directory}: a CLIP tokenizer needs a bos_token and an eos_token")
    tok.post_processor = processors.RobertaProcessing((tokens["eos_token"], ids["eos_token"]),
                                                      (tokens["bos_token"], ids["bos_token"]),
                                                      trim_offsets=False, add_prefix_space=False)
    return Tokenizer(_hf_encode(tok), kind="clip-bpe", path=directory,
                     pad_token_id=ids.get("pad_token", ids["eos_token"]), eos_token_id=ids["eos_token"],
                     bos_token_id=ids["bos_token"], vocab_size=tok.get_vocab_size(with_added_tokens=True),
                     model_max_length=limit or CLIP_MAX_LENGTH, num_special_tokens=2)


def read_spiece_tensor(file: str | os.PathLike) -> bytes:
    """The sentencepiece proto a ComfyUI UMT5 file carries as its `spiece_model` uint8 tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "numpy") as f:
            if SPIECE_TENSOR not in f.keys():
                raise ValueError(f"{file}: no `{SPIECE_TENSOR}` tensor in this safetensors file (only ComfyUI's "
                                 "UMT5 files carry their tokenizer); pass the tokenizer's directory or file")
            data = f.get_tensor(SPIECE_TENSOR)
    except ValueError:
        raise
    except Exception as e:  # safetensors raises its own error types on a malformed file
        raise ValueError(f"{file}: not a readable safetensors file ({e})") from None
    if data.dtype.itemsize != 1 or data.ndim != 1:
        raise ValueError(f"{file}: `{SPIECE_TENSOR}` is {data.dtype} {list(data.shape)}; expected 1-D uint8 bytes")
    return data.tobytes()


def _spiece(proto: bytes, source: Path, directory: Path | None) -> Tokenizer:
    """A sentencepiece model with T5's convention: `</s>` appended, no BOS, pad = the model's pad id
    (`directory`: where a tokenizer_config.json may give model_max_length)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(proto)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError variants on a bad proto
        raise ValueError(f"{source}: not a sentencepiece model ({e})") from None
    eos = sp.eos_id()
    if eos < 0:
        raise ValueError(f"{source}: the sentencepiece model has no eos piece (T5 appends </s>)")
    pad = sp.pad_id()
    if pad < 0:  # a model trained without a pad id may still hold T5's <pad> piece
        pad = sp.piece_to_id(_T5_DEFAULTS["pad_token"])
        if pad == sp.unk_id():
            raise ValueError(f"{source}: the sentencepiece model has no pad piece")
    limit = _specials(directory, {})[3]

    def encode(prompts: list[str], max_length: int | None) -> list[list[int]]:
        rows = sp.encode(prompts, out_type=int, add_bos=False, add_eos=False)
        return [(row if max_length is None else row[:max_length - 1]) + [eos] for row in rows]

    return Tokenizer(encode, kind="sentencepiece", path=source, pad_token_id=pad, eos_token_id=eos,
                     bos_token_id=None, vocab_size=sp.get_piece_size(), model_max_length=limit or T5_MAX_LENGTH,
                     num_special_tokens=1)


# ----------------------------------------------------------------------------- prompt cleaning


def wan_prompt_clean(text: str) -> str:
    """diffusers' WanPipeline `prompt_clean`: `ftfy.fix_text` when ftfy is installed (diffusers checks the
    same), HTML entities unescaped twice, whitespace runs collapsed to one space, ends stripped."""
    if importlib.util.find_spec("ftfy") is not None:
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()
