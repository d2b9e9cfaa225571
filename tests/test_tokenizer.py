"""`load_tokenizer`: ids and masks equal transformers' tokenizers (and ComfyUI's SPieceTokenizer for the
UMT5 `spiece_model` tensor) at the pipelines' lengths, from every on-disk kind; error paths; no torch.

References: the tokenizer files shipped in the ComfyUI snapshot (CLIP `sd1_tokenizer/` vocab.json +
merges.txt, T5 `t5_tokenizer/tokenizer.json`) and a tiny unigram sentencepiece model trained here with
T5's special ids (pad 0, eos 1, unk 2, no bos), written as spiece.model and inside a .safetensors.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import io
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import jaxdiff
from jaxdiff.pipelines.tokenizer import (SPIECE_TENSOR, Tokenizer, check_vocab, load_tokenizer,
                                         wan_prompt_clean)

REPO = Path(__file__).resolve().parents[1]
COMFY_TARBALL = REPO.parent / "shared" / "comfyui" / "comfyui-a125cd84.tar.gz"
COMFY_DIRS = [os.environ.get("JAXDIFF_COMFYUI"), "/tmp/jaxdiff-comfyui", "/tmp/comfyui"]
COMFY_FILES = ("comfy/sd1_tokenizer/", "comfy/text_encoders/t5_tokenizer/", "comfy/text_encoders/spiece_tokenizer.py")

LONG = "a photo of an astronaut riding a horse on the moon, highly detailed, 8k, " * 60  # > 512 tokens
PROMPTS = {
    "plain": "A photo of a cat sitting on a windowsill",
    "unicode": "Crème brûlée in a café, naïve résumé, Straße über München, 東京の猫と犬",
    "emoji": "a happy dog 🐶 eating pizza 🍕🍕 at sunset 🌅",
    "long": LONG,
    "empty": "",
    "whitespace": "  \t \n  ",
    "comfy_weights": "a (red:1.2) cat, [blue] sky, ((masterpiece)), \\(escaped\\) embedding:foo",
    "spaces_and_case": "  Two  spaces,\ttabs\nand NEWLINES  ",
}
LENGTHS = (77, 256, 512)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def comfy(tmp_path_factory) -> Path:
    """A ComfyUI root holding its shipped tokenizer files (unpacked from the snapshot tarball if needed)."""
    for d in COMFY_DIRS:
        if d and (Path(d) / "comfy" / "sd1_tokenizer" / "vocab.json").is_file():
            return Path(d)
    if not COMFY_TARBALL.is_file():
        pytest.fail(f"ComfyUI snapshot not found in {COMFY_DIRS[1:]} or at {COMFY_TARBALL}")
    out = tmp_path_factory.mktemp("comfy")
    with tarfile.open(COMFY_TARBALL) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(tuple("ComfyUI/" + f for f in COMFY_FILES))]
        tar.extractall(out, members=members, filter="data")
    return out / "ComfyUI"


def _training_lines() -> list[str]:
    rng = random.Random(0)
    words = ("a photo of cat dog red blue sky astronaut riding horse on the moon painting detailed highly "
             "sitting windowsill happy eating pizza sunset masterpiece escaped embedding foo two spaces tabs "
             "and newlines crème brûlée café naïve résumé straße über münchen 東京 の 猫 と 犬 8k").split()
    words += ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(300)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + rng.choice([".", ",", "!", " (red:1.2)", ""])
            for _ in range(2000)]


@pytest.fixture(scope="module")
def spiece(tmp_path_factory) -> Path:
    """A directory with a tiny T5-style unigram spiece.model and `umt5.safetensors` holding it as
    `spiece_model` (ComfyUI's layout) next to a dummy weight."""
    import sentencepiece
    from safetensors.numpy import save_file

    out = tmp_path_factory.mktemp("spiece")
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_lines()), model_writer=buf, vocab_size=300, hard_vocab_limit=False,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", character_coverage=1.0, minloglevel=2, num_threads=1)
    proto = buf.getvalue()
    (out / "spiece.model").write_bytes(proto)
    save_file({SPIECE_TENSOR: np.frombuffer(proto, np.uint8).copy(),
               "shared.weight": np.zeros((4, 8), np.float32)}, str(out / "umt5.safetensors"))
    return out


@functools.cache
def _hf(cls_name: str, path: str):
    import transformers

    return getattr(transformers, cls_name).from_pretrained(path)


@functools.cache
def _comfy_spiece(comfy_root: str, proto: bytes):
    """ComfyUI's own SPieceTokenizer (comfy/text_encoders/spiece_tokenizer.py) on the model bytes."""
    path = Path(comfy_root) / "comfy" / "text_encoders" / "spiece_tokenizer.py"
    spec = importlib.util.spec_from_file_location("comfy_spiece_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SPieceTokenizer(proto)


def _transformers_ref(cls_name: str, path: Path):
    def ref(prompts, max_length, padding="max_length", truncation=True):
        out = _hf(cls_name, str(path))(prompts, padding=padding, max_length=max_length, truncation=truncation,
                                       return_tensors="np")
        return out["input_ids"], out["attention_mask"]

    return ref


def _comfy_ref(comfy_root: Path, proto: bytes):
    """ComfyUI's UMT5 ids, truncated as transformers does (keep the final </s>) and padded with 0
    (ComfyUI's UMT5XXlTokenizer pads with pad_token 0 and never truncates)."""
    def ref(prompts, max_length, padding="max_length", truncation=True):
        rows = [_comfy_spiece(str(comfy_root), proto)(p)["input_ids"] for p in prompts]
        if truncation:
            rows = [row if len(row) <= max_length else row[:max_length - 1] + [row[-1]] for row in rows]
        ids = np.zeros((len(rows), max_length if padding == "max_length" else max(map(len, rows))), np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
        return ids, mask

    return ref


@pytest.fixture(scope="module")
def clip_json_dir(comfy, tmp_path_factory) -> Path:
    """CLIP as a tokenizer.json directory, written by transformers from ComfyUI's vocab.json + merges.txt."""
    out = tmp_path_factory.mktemp("clip_json")
    _hf("CLIPTokenizer", str(comfy / "comfy" / "sd1_tokenizer")).save_pretrained(out)
    assert (out / "tokenizer.json").is_file() and not (out / "vocab.json").exists()
    return out


CASES = ("clip_bpe-CLIPTokenizer", "clip_bpe-CLIPTokenizerFast", "clip_json-CLIPTokenizer",
         "t5_json-T5TokenizerFast", "spiece-T5Tokenizer", "spiece-T5TokenizerFast",
         "umt5_safetensors-ComfyUI_SPieceTokenizer", "umt5_safetensors-T5Tokenizer")


@pytest.fixture(scope="module")
def sources(comfy, spiece, clip_json_dir):
    """case id → (what we load, the reference's transformers class or "ComfyUI", what it loads)."""
    sd1, t5 = comfy / "comfy" / "sd1_tokenizer", comfy / "comfy" / "text_encoders" / "t5_tokenizer"
    return {
        "clip_bpe-CLIPTokenizer": (sd1, "CLIPTokenizer", sd1),
        "clip_bpe-CLIPTokenizerFast": (sd1, "CLIPTokenizerFast", sd1),
        "clip_json-CLIPTokenizer": (clip_json_dir, "CLIPTokenizer", sd1),
        "t5_json-T5TokenizerFast": (t5, "T5TokenizerFast", t5),
        "spiece-T5Tokenizer": (spiece / "spiece.model", "T5Tokenizer", spiece),
        "spiece-T5TokenizerFast": (spiece, "T5TokenizerFast", spiece),
        "umt5_safetensors-ComfyUI_SPieceTokenizer": (spiece / "umt5.safetensors", "ComfyUI", spiece),
        "umt5_safetensors-T5Tokenizer": (spiece / "umt5.safetensors", "T5Tokenizer", spiece),
    }


@pytest.fixture(scope="module")
def cases(comfy, sources):
    """case id → (what we load, reference(prompts, max_length, padding, truncation) → (ids, mask))."""
    out = {}
    for case, (path, ref_name, ref_path) in sources.items():
        ref = (_comfy_ref(comfy, (ref_path / "spiece.model").read_bytes()) if ref_name == "ComfyUI"
               else _transformers_ref(ref_name, ref_path))
        out[case] = (path, ref)
    return out


@functools.cache
def _ours(path: str) -> Tokenizer:
    return load_tokenizer(path)


def _assert_same(ours: dict, ref: tuple, what: str):
    ids, mask = ref
    assert ours["input_ids"].dtype == np.int32 and ours["attention_mask"].dtype == np.int32
    np.testing.assert_array_equal(ours["input_ids"], ids, err_msg=f"input_ids: {what}")
    np.testing.assert_array_equal(ours["attention_mask"], mask, err_msg=f"attention_mask: {what}")


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("max_length", LENGTHS)
@pytest.mark.parametrize("case", CASES)
def test_ids_and_mask_equal_the_reference_for_each_prompt(cases, case, max_length):
    path, ref = cases[case]
    tok = _ours(str(path))
    for name, prompt in PROMPTS.items():
        _assert_same(tok(prompt, max_length), ref([prompt], max_length), f"{case} {name!r} at {max_length}")


@pytest.mark.parametrize("max_length", LENGTHS)
@pytest.mark.parametrize("case", CASES)
def test_a_batch_equals_the_reference(cases, case, max_length):
    path, ref = cases[case]
    prompts = list(PROMPTS.values())
    out = _ours(str(path))(prompts, max_length)
    assert out["input_ids"].shape == (len(prompts), max_length)
    _assert_same(out, ref(prompts, max_length), f"{case} batch at {max_length}")


@pytest.mark.parametrize("case", CASES)
def test_padding_longest_equals_the_reference(cases, case):
    path, ref = cases[case]
    prompts = [PROMPTS["plain"], PROMPTS["empty"], PROMPTS["unicode"]]
    _assert_same(_ours(str(path))(prompts, 77, padding="longest"), ref(prompts, 77, padding="longest"),
                 f"{case} longest")


@pytest.mark.parametrize("case", ["clip_bpe-CLIPTokenizer", "t5_json-T5TokenizerFast", "spiece-T5Tokenizer"])
def test_no_truncation_with_padding_longest_equals_the_reference(cases, case):
    path, ref = cases[case]
    prompts = [PROMPTS["plain"], LONG]
    out = _ours(str(path))(prompts, 77, padding="longest", truncation=False)
    assert out["input_ids"].shape[1] > 512
    _assert_same(out, ref(prompts, 77, padding="longest", truncation=False), f"{case} untruncated")


@pytest.mark.parametrize("case", ["clip_bpe-CLIPTokenizer", "t5_json-T5TokenizerFast", "spiece-T5Tokenizer"])
def test_random_text_equals_the_reference(cases, case):
    """Seeded random strings over letters, punctuation, odd whitespace, accents, CJK, emoji, ligatures,
    full-width and combining characters (no special-token text; see the test below for that)."""
    path, ref = cases[case]
    rng = random.Random(1)
    alphabet = list("abc XYZ  \n\t.,!?():'\"-0123") + ["é", "e\u0301", "日", "😀", "\u00a0", "\u3000", "ﬁ", "Ａ",
                                                      "\u200b", "\r", "   ", "cat", "photo", "'s"]
    prompts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16))) for _ in range(300)]
    _assert_same(_ours(str(path))(prompts, 77), ref(prompts, 77), f"{case} random text")


def test_clip_special_token_text_equals_transformers(cases):
    path, ref = cases["clip_bpe-CLIPTokenizer"]
    # upper case: <|startoftext|> is matched after lower-casing, <|endoftext|> (a plain-string pad_token in
    # the files) is not
    prompts = ["a <|endoftext|> b", "<|startoftext|>cat<|endoftext|>", "x<|endoftext|><|endoftext|>y",
               "<|ENDOFTEXT|> and <|StartOfText|>"]
    _assert_same(_ours(str(path))(prompts, 77), ref(prompts, 77), "CLIP special-token text")


def test_t5_special_token_text_follows_tokenizer_json_as_written(comfy):
    """transformers 5 rebuilds T5's pre-tokenizer (WhitespaceSplit + Metaspace 'always') instead of the
    file's, which prepends ▁ after special-token text such as "<pad>" in a prompt; we keep the file's
    pipeline, i.e. what `tokenizers` (and transformers 4) give."""
    from tokenizers import Tokenizer as HFTokenizer

    path = comfy / "comfy" / "text_encoders" / "t5_tokenizer"
    raw = HFTokenizer.from_file(str(path / "tokenizer.json"))
    for prompt in ["<pad>y", "a </s> b <extra_id_0> c"]:
        row = raw.encode(prompt).ids
        assert _ours(str(path))(prompt, 77)["input_ids"][0, :len(row)].tolist() == row


# ----------------------------------------------------------------------------- attributes and layout


@pytest.mark.parametrize("case", [c for c in CASES if "ComfyUI" not in c])
def test_special_token_ids_equal_transformers(sources, case):
    path, ref_name, ref_path = sources[case]
    tok, hf = _ours(str(path)), _hf(ref_name, str(ref_path))
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (hf.pad_token_id, hf.eos_token_id,
                                                                      hf.bos_token_id)


def test_vocab_size_and_model_max_length_follow_the_files(comfy, spiece):
    sd1, t5 = comfy / "comfy" / "sd1_tokenizer", comfy / "comfy" / "text_encoders" / "t5_tokenizer"
    clip = _ours(str(sd1))
    assert (clip.vocab_size, clip.model_max_length) == (len(_hf("CLIPTokenizer", str(sd1))), 8192)
    t5_tok = _ours(str(t5))
    assert (t5_tok.vocab_size, t5_tok.model_max_length) == (len(_hf("T5TokenizerFast", str(t5))), 512)
    # sentencepiece: the model's pieces (transformers' T5Tokenizer adds 100 <extra_id_*> on top)
    import sentencepiece

    pieces = sentencepiece.SentencePieceProcessor(model_file=str(spiece / "spiece.model")).get_piece_size()
    for path in (spiece, spiece / "umt5.safetensors"):
        tok = _ours(str(path))
        assert (tok.vocab_size, tok.model_max_length, tok.bos_token_id) == (pieces, 512, None)
    assert len(_hf("T5Tokenizer", str(spiece))) == pieces + 100


def test_truncation_keeps_the_special_tokens_at_the_ends(comfy, spiece):
    clip = _ours(str(comfy / "comfy" / "sd1_tokenizer"))(LONG, 77)["input_ids"][0]
    assert clip[0] == 49406 and clip[-1] == 49407 and 49407 not in clip[1:-1]
    for path in (comfy / "comfy" / "text_encoders" / "t5_tokenizer", spiece / "umt5.safetensors"):
        ids = _ours(str(path))(LONG, 512)
        assert ids["input_ids"][0, -1] == 1 and ids["attention_mask"].all()


def test_padding_is_the_pad_id_with_a_zero_mask(comfy, spiece):
    for path, pad in ((comfy / "comfy" / "sd1_tokenizer", 49407), (spiece, 0)):
        out = _ours(str(path))(["a cat"], 77)
        n = int(out["attention_mask"].sum())
        assert (out["input_ids"][0, n:] == pad).all() and not out["attention_mask"][0, n:].any() and n < 77


def test_a_diffusers_pipeline_tokenizer_folder_loads(comfy, tmp_path):
    """tokenizer/ (CLIP files) and tokenizer_2/ (T5 tokenizer.json) of a diffusers Flux pipeline dir."""
    import shutil

    shutil.copytree(comfy / "comfy" / "sd1_tokenizer", tmp_path / "tokenizer")
    shutil.copytree(comfy / "comfy" / "text_encoders" / "t5_tokenizer", tmp_path / "tokenizer_2")
    assert load_tokenizer(tmp_path / "tokenizer").kind == "clip-bpe"
    assert load_tokenizer(tmp_path / "tokenizer_2").kind == "tokenizer.json"
    with pytest.raises(FileNotFoundError, match=r"tokenizer_2"):
        load_tokenizer(tmp_path)


def test_jaxdiff_load_tokenizer_is_the_public_entry(spiece):
    assert "load_tokenizer" in jaxdiff.__all__
    tok = jaxdiff.load_tokenizer(spiece / "umt5.safetensors")
    assert isinstance(tok, Tokenizer) and tok("a cat", 16)["input_ids"].shape == (1, 16)


def test_importing_and_using_the_module_imports_neither_torch_nor_transformers(comfy, spiece):
    code = (
        "import sys\n"
        "from jaxdiff.pipelines.tokenizer import load_tokenizer\n"
        "for p in sys.argv[1:]:\n"
        "    load_tokenizer(p)(['a cat'], 77)\n"
        "bad = [m for m in ('torch', 'transformers', 'diffusers', 'jax') if m in sys.modules]\n"
        "assert not bad, bad\n")
    paths = [comfy / "comfy" / "sd1_tokenizer", comfy / "comfy" / "text_encoders" / "t5_tokenizer",
             spiece / "spiece.model", spiece / "umt5.safetensors"]
    proc = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True,
                          cwd=REPO.parent)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- errors


def test_a_missing_path_is_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_tokenizer(tmp_path / "nope")


def test_a_directory_without_tokenizer_files_names_the_files_looked_for(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*vocab\.json.*merges\.txt.*spiece\.model"):
        load_tokenizer(tmp_path)


def test_vocab_without_merges_names_the_missing_file(comfy, tmp_path):
    (tmp_path / "vocab.json").write_bytes((comfy / "comfy" / "sd1_tokenizer" / "vocab.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="missing merges.txt"):
        load_tokenizer(tmp_path)


def test_a_safetensors_without_spiece_model_names_the_file(tmp_path):
    from safetensors.numpy import save_file

    file = tmp_path / "clip_l.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(file))
    with pytest.raises(ValueError, match=rf"{file}.*spiece_model"):
        load_tokenizer(file)


def test_corrupt_files_are_value_errors_naming_them(tmp_path):
    for name, data in (("spiece.model", b"not a proto"), ("x.safetensors", b"\x00" * 3)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name):
            load_tokenizer(tmp_path / name)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="notes.txt: not a tokenizer file"):
        load_tokenizer(tmp_path / "notes.txt")


def test_bad_call_arguments_are_value_errors(spiece):
    tok = _ours(str(spiece))
    with pytest.raises(ValueError, match="padding"):
        tok("a cat", 77, padding="do_not_pad")
    with pytest.raises(ValueError, match="max_length=0"):
        tok("a cat", 0)
    with pytest.raises(ValueError, match="truncation=True"):
        tok(LONG, 77, truncation=False)
    with pytest.raises(ValueError, match="strings"):
        tok([1, 2], 77)


def test_check_vocab_rejects_an_embedding_smaller_than_the_tokenizer(spiece):
    tok = _ours(str(spiece))
    check_vocab(tok, tok.vocab_size, "umt5.safetensors")
    with pytest.raises(ValueError, match=r"^umt5\.safetensors: .* rows") as info:
        check_vocab(tok, tok.vocab_size - 1, "umt5.safetensors")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- Wan prompt cleaning


def _diffusers_prompt_clean():
    """diffusers' own `prompt_clean` (wan/pipeline_wan.py), read from its source so the test does not pay
    for importing diffusers; `is_ftfy_available` as diffusers computes it."""
    spec = importlib.util.find_spec("diffusers")
    source = Path(spec.origin).parent / "pipelines" / "wan" / "pipeline_wan.py"
    tree = ast.parse(source.read_text())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)
             and n.name in ("basic_clean", "whitespace_clean", "prompt_clean")]
    assert len(funcs) == 3, f"{source}: prompt_clean helpers not found"
    import html
    import re

    ftfy = importlib.util.find_spec("ftfy") is not None
    namespace = {"html": html, "re": re, "is_ftfy_available": lambda: ftfy}
    if ftfy:
        namespace["ftfy"] = __import__("ftfy")
    exec(compile(ast.Module(funcs, []), str(source), "exec"), namespace)
    return namespace["prompt_clean"]


def test_wan_prompt_clean_equals_diffusers():
    reference = _diffusers_prompt_clean()
    for text in [*PROMPTS.values(), "fish &amp;amp; chips", "&lt;b&gt; bold &#39;quote&#39;", "\u3000wide\u00a0space ",
                 "line\r\nbreak\x0bvt", "ÃƒÂ© mojibake"]:
        assert wan_prompt_clean(text) == reference(text), repr(text)
