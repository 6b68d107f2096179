"""Hugging Face tokenizer directories read by llmkit give the ids transformers gives.

Tokenizers are trained here, locally and in well under a second, with ``tokenizers`` and
``sentencepiece``, and written as Hugging Face directories; ``transformers.AutoTokenizer`` (a
test-only dependency) is the reference.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sentencepiece as spm
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from llmkit.tokenizer.hf import (
    HF_META_FILE,
    HFTokenizer,
    HFTokenizerError,
    export_tokenizer,
    is_hf_tokenizer_dir,
    load_hf_tokenizer,
)

transformers.logging.set_verbosity_error()

MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog.",
    "Grüße aus München! Äpfel, Öl und Übermut – straßenweise.",
    "Ça coûte 5 € : très cher, naïve café, résumé, señor, Ångström.",
    "東京は日本の首都です。",
    "你好，世界！这是一个测试。",
    "한국어 텍스트도 있습니다",
    "Emoji 🙂👍🏽 and a family 👩‍👩‍👧 🎉",
    "Ελληνικά και русский текст, עברית",
    "numbers 12345 and 3.14159, don't it's we're",
]
# Beyond the sentencepiece sample: whitespace runs and special tokens written in the text.
EXTRA = ["  leading spaces,\ttabs\nand  newlines\n", "a [MASK] token and <|endoftext|> inside"]
CORPUS = (MULTILINGUAL + EXTRA) * 5 + [
    "Hello world, this is a small corpus for training tiny tokenizers.",
    "Sphinx of black quartz, judge my vow. Pack my box with five dozen liquor jugs.",
]


def _ids(hf, text: str, special: bool = False) -> list[int]:
    return hf(text, add_special_tokens=special).input_ids


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_tokenizers")
    out = {}

    # GPT-2: byte-level BPE, one special token <|endoftext|> that is bos, eos and unk.
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    out["gpt2"] = d = root / "gpt2"
    d.mkdir()
    bpe.save(str(d / "tokenizer.json"))
    eot = "<|endoftext|>"
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": eot, "eos_token": eot, "unk_token": eot}))  # fmt: skip

    # BERT: WordPiece vocab.txt only (uncased and cased), and the tokenizer.json transformers writes for it.
    from tokenizers import BertWordPieceTokenizer

    for name, lower in (("bert_uncased", True), ("bert_cased", False)):
        wp = BertWordPieceTokenizer(lowercase=lower)
        wp.train_from_iterator(CORPUS, vocab_size=300)
        out[name] = d = root / name
        d.mkdir()
        wp.save_model(str(d))
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lower}
        (d / "tokenizer_config.json").write_text(json.dumps(config))
    out["bert_json"] = root / "bert_json"
    transformers.AutoTokenizer.from_pretrained(out["bert_uncased"]).save_pretrained(out["bert_json"])
    (out["bert_json"] / "vocab.txt").unlink(missing_ok=True)  # tokenizer.json alone must be enough

    # Llama: a SentencePiece BPE model with Llama's settings (dummy prefix, byte fallback, no normalisation).
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, model_type="bpe", vocab_size=500, byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True, minloglevel=2,
    )  # fmt: skip
    out["llama"] = d = root / "llama"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
              "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "legacy": False}  # fmt: skip
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def reference(dirs) -> dict[str, object]:
    return {name: transformers.AutoTokenizer.from_pretrained(d) for name, d in dirs.items()}


@pytest.mark.parametrize("name", ["gpt2", "bert_uncased", "bert_cased", "bert_json", "llama"])
def test_ids_and_text_match_transformers_on_a_multilingual_sample(dirs, reference, name: str) -> None:
    ours, hf = load_hf_tokenizer(dirs[name]), reference[name]
    assert ours.vocab_size == len(hf)
    sample = MULTILINGUAL if name == "llama" else MULTILINGUAL + EXTRA  # see the sentencepiece test below
    for text in sample:
        ids = ours.encode(text)
        assert ids == _ids(hf, text), text
        assert ours.encode_hf(text) == _ids(hf, text, special=True), text
        kept = [i for i in ids if i not in {ours.pad_id, ours.bos_id, ours.eos_id}]  # llmkit's decode drops those
        assert ours.decode(ids) == hf.decode(kept), text


def test_special_token_roles(dirs) -> None:
    gpt2 = load_hf_tokenizer(dirs["gpt2"])
    eot = gpt2.piece_to_id("<|endoftext|>")
    assert (gpt2.bos_id, gpt2.eos_id, gpt2.unk_id, gpt2.pad_id) == (eot, eot, eot, eot)  # pad falls back to eos
    assert (gpt2.add_bos, gpt2.add_eos, gpt2.cls_id, gpt2.mask_id) == (False, False, None, None)

    bert = load_hf_tokenizer(dirs["bert_uncased"])
    ids = {t: bert.piece_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    assert (bert.pad_id, bert.unk_id, bert.cls_id, bert.sep_id, bert.mask_id) == tuple(ids.values())
    assert (bert.bos_id, bert.eos_id) == (bert.cls_id, bert.sep_id)  # encoders: [CLS] text [SEP]
    assert bert.encode("hello", bos=True, eos=True) == bert.encode_hf("hello")
    assert bert.special_ids == set(ids.values())

    llama = load_hf_tokenizer(dirs["llama"])
    assert (llama.unk_id, llama.bos_id, llama.eos_id, llama.add_bos, llama.add_eos) == (0, 1, 2, True, False)
    assert llama.decode([1, *llama.encode("Grüße"), 2]) == "Grüße"  # bos/eos dropped


def test_sentencepiece_dirs_follow_sentencepiece_itself(dirs) -> None:
    """transformers 5 converts tokenizer.model to a tokenizers BPE that drops the dummy prefix before
    leading spaces and matches "<s>" inside text; llmkit encodes exactly as the model was trained."""
    sp = spm.SentencePieceProcessor(model_file=str(dirs["llama"] / "tokenizer.model"))
    ours = load_hf_tokenizer(dirs["llama"])
    for text in MULTILINGUAL + EXTRA:
        assert ours.encode(text) == sp.encode(text)
        assert ours.decode(ours.encode(text)) == text


def test_stored_truncation_and_padding_are_ignored(tmp_path: Path, dirs) -> None:
    raw = Tokenizer.from_file(str(dirs["gpt2"] / "tokenizer.json"))
    raw.enable_truncation(max_length=3)
    raw.enable_padding(length=64)
    raw.save(str(tmp_path / "tokenizer.json"))
    text = MULTILINGUAL[0]
    assert load_hf_tokenizer(tmp_path).encode(text) == load_hf_tokenizer(dirs["gpt2"]).encode(text)


def test_save_reload_and_tamper_detection(tmp_path: Path, dirs) -> None:
    ours = load_hf_tokenizer(dirs["bert_uncased"])
    saved = ours.save(tmp_path / "tok")
    assert {p.name for p in saved.iterdir()} == {"vocab.txt", "tokenizer_config.json", HF_META_FILE}
    meta = json.loads((saved / HF_META_FILE).read_text())
    assert meta["kind"] == "hf" and meta["backend"] == "wordpiece" and meta["checksum"] == ours.checksum()
    back = HFTokenizer.from_dir(saved)
    assert back.checksum() == ours.checksum()
    assert all(back.encode(t) == ours.encode(t) for t in MULTILINGUAL)
    (saved / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    with pytest.raises(HFTokenizerError, match="checksum"):
        HFTokenizer.from_dir(saved)


def test_llmkit_tokenizer_load_dispatches_on_hf_dirs(tmp_path: Path, dirs, bpe_tokenizer) -> None:
    """llmkit's own tokenizer.json (a meta file) and HF's tokenizer.json are told apart by content."""
    import llmkit.tokenizer

    own = bpe_tokenizer.save(tmp_path / "own")
    assert not is_hf_tokenizer_dir(own)
    for name in ("gpt2", "bert_cased", "llama"):
        assert is_hf_tokenizer_dir(dirs[name])
    tok = llmkit.tokenizer.load(dirs["gpt2"])
    assert isinstance(tok, HFTokenizer)
    assert tok.encode(MULTILINGUAL[1]) == load_hf_tokenizer(dirs["gpt2"]).encode(MULTILINGUAL[1])
    assert llmkit.tokenizer.load(own).kind == "bpe"
    # a checkpoint keeps its tokenizer in tokenizer/: HF ones saved there are found too
    load_hf_tokenizer(dirs["llama"]).save(tmp_path / "ckpt" / "tokenizer")
    assert isinstance(llmkit.tokenizer.load(tmp_path / "ckpt"), HFTokenizer)


def test_export_llmkit_bpe_tokenizer_for_transformers(tmp_path: Path, bpe_tokenizer) -> None:
    out = export_tokenizer(bpe_tokenizer, tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(out)
    assert (hf.pad_token_id, hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2, 3)
    for text in MULTILINGUAL + EXTRA[:1] + ["def f(x):\n    return x  # indented\n"]:
        ids = bpe_tokenizer.encode(text)
        assert _ids(hf, text, special=True) == ids, text  # nothing added by default, like llmkit
        assert hf.decode(ids) == bpe_tokenizer.decode(ids) == text
    again = load_hf_tokenizer(out)  # and llmkit reads the exported directory back
    assert all(again.encode(t) == bpe_tokenizer.encode(t) for t in MULTILINGUAL)


def test_export_refuses_tokenizers_without_a_faithful_hf_form(tmp_path: Path, char_tokenizer) -> None:
    with pytest.raises(HFTokenizerError, match="'char' tokenizer"):
        export_tokenizer(char_tokenizer, tmp_path / "c")


def test_unreadable_directories_say_why(tmp_path: Path) -> None:
    with pytest.raises(HFTokenizerError, match="no tokenizer.json, vocab.txt or tokenizer.model"):
        HFTokenizer({}, source="x")
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(HFTokenizerError, match=r"unknown token '\[UNK\]' is not in the vocabulary"):
        load_hf_tokenizer(tmp_path)
