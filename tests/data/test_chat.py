"""Chat and instruction data: readers (file:line errors), one chat template, targets on assistant turns only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmkit.data.chat import Conversation, encode_conversations, from_pair, read_alpaca, read_chat
from llmkit.data.chat_template import CHATML, ChatTemplate, plain_template, resolve_template
from llmkit.data.masking import IGNORE_INDEX as IGNORE
from llmkit.data.task_batches import encode_pairs
from llmkit.data.tasks import TextPair
from llmkit.errors import ConfigError, DataError, LlmkitError
from llmkit.tokenizer import TokenizerConfig, train

TEXT = ["The quick brown fox jumps over the lazy dog. Ein Hund, eine Katze! {braces} \"quotes\" ü 東京 \\ ok?"] * 4
CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "a dog"},
    {"role": "assistant", "content": "ein Hund"},
    {"role": "user", "content": "a cat"},
    {"role": "assistant", "content": "eine Katze"},
]


@pytest.fixture(scope="module")
def tok():
    cfg = TokenizerConfig(kind="char", vocab_size=0, character_coverage=1.0, byte_fallback=True,
                          user_special_tokens=["[CLS]", "[SEP]", "[MASK]"])  # fmt: skip
    return train(cfg, TEXT, seed=0)


@pytest.fixture(scope="module")
def bpe():
    cfg = TokenizerConfig(kind="bpe", vocab_size=360)  # the default special tokens: encoder and chat ones
    return train(cfg, TEXT * 20 + ["a dog ein Hund a cat eine Katze Be brief."] * 50, seed=0)


def _write(path, rows) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------- targets


@pytest.mark.parametrize("which", ["tok", "bpe"])
def test_chatml_targets_are_exactly_the_assistant_tokens_and_their_end_of_turn(which, request):
    tok = request.getfixturevalue(which)
    t = resolve_template("chatml", tok, data_format="chat")
    end = tok.special_tokens["<|im_end|>"]
    start = tok.special_tokens["<|im_start|>"]
    assert (t.end_of_turn, t.end_of_turn_id) == ("<|im_end|>", end)
    ids, target = t.encode(CONV)
    # built by hand, turn by turn: the template's text around each answer is context
    expected: list[tuple[int, bool]] = []
    for m in CONV:
        head = [start, *tok.encode(m["role"] + "\n")]
        expected += [(i, False) for i in head]
        body = tok.encode(m["content"]) + [end]
        expected += [(i, m["role"] == "assistant") for i in body]
        expected += [(i, False) for i in tok.encode("\n")]
    assert list(zip(ids, target)) == expected
    assert tok.decode([i for i, g in zip(ids, target) if g]) == "ein Hund<|im_end|>eine Katze<|im_end|>"
    (ex,) = encode_conversations([Conversation(CONV)], t, max_len=512)
    # labels: the next token where it is a target, -100 elsewhere
    assert ex.labels.tolist() == [i if g else IGNORE for i, g in zip(ids[1:], target[1:])]
    assert ex.input_ids.tolist() == ids[:-1]
    assert (ex.labels == end).sum() == 2


def test_prompt_for_generation_is_the_training_prefix_before_the_last_answer(tok):
    t = resolve_template("chatml", tok)
    ids, target = t.encode(CONV)
    prompt = t.prompt_ids(CONV[:-1])
    last_start = max(i for i in range(len(ids)) if target[i] and not target[i - 1])
    assert prompt == ids[:last_start]
    assert ids[last_start - 1] == tok.encode("\n")[0] and not target[last_start - 1]
    assert t.render(CONV[:-1], add_generation_prompt=True).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("template", ["{source}\n", "English: {source}\nGerman:", 'Q {{x}} "{source}" ü\\ ->'])
def test_plain_template_reproduces_the_prompt_response_pairs_of_before(tok, template):
    pairs = [TextPair("a dog", "ein Hund"), TextPair("a {cat}", 'eine "Katze" 東京'), TextPair("x" * 60, "y")]
    chat = resolve_template("plain", tok, data_format="parallel", prompt_template=template)
    ours = encode_conversations([from_pair(p) for p in pairs], chat, max_len=40)
    before = encode_pairs(pairs, tok, template=template, max_len=40)
    assert len(ours) == len(before) == 2  # the long prompt fills the window: left out by both
    for a, b in zip(ours, before):
        assert a.input_ids.tolist() == b.input_ids.tolist()
        assert a.labels.tolist() == b.labels.tolist()
    assert chat.end_of_turn_id == tok.eos_id


def test_truncated_conversations_keep_targets_that_fit_and_drop_those_without(tok):
    t = resolve_template("chatml", tok)
    (ex,) = encode_conversations([Conversation(CONV)], t, max_len=50)
    assert len(ex.input_ids) == 50 and (ex.labels != IGNORE).sum() == 51 - 43  # answer from token 43
    assert encode_conversations([Conversation(CONV)], t, max_len=42) == []  # no target within the window


def test_template_matches_transformers_rendering_and_its_generation_mask(tmp_path):
    """A Hugging Face tokenizer's own template (with {% generation %} tags): llmkit renders the same
    text, gives the same ids and finds as targets exactly the tokens transformers' assistant mask marks."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from llmkit.tokenizer.hf import HFTokenizer

    specials = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(TEXT * 10, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    zephyr = (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' }}"
        "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )
    raw.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
        "additional_special_tokens": specials[1:], "chat_template": zephyr}))  # fmt: skip
    ours = HFTokenizer.from_dir(tmp_path)
    t = resolve_template("auto", ours, data_format="chat")
    assert t.source == zephyr and t.end_of_turn == "<|endoftext|>"
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert t.render(CONV) == theirs.apply_chat_template(CONV, tokenize=False)
    out = theirs.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, target = t.encode(CONV)
    assert ids == list(out["input_ids"])
    assert [int(g) for g in target] == list(out["assistant_masks"])
    assert t.prompt_ids(CONV[:3]) == list(theirs.apply_chat_template(CONV[:3], add_generation_prompt=True,
                                                                       tokenize=True, return_dict=True)["input_ids"])  # fmt: skip
    # llmkit generate (chat=auto) prompts an imported model with its own template: what transformers would
    from llmkit.recipes.generate import Config, chat_template, encode_prompt

    c = Config(out_dir=str(tmp_path), checkpoint="hf:x", system="Be brief.")
    found = chat_template({"path": "hf:x"}, ours, c)
    assert found is not None and found.source == zephyr
    assert encode_prompt(ours, "a dog", found, c.system) == t.prompt_ids(CONV[:2])
    assert chat_template({"path": "hf:x"}, ours, Config(out_dir=".", checkpoint="x", chat=False)) is None


def test_a_template_that_rewrites_earlier_turns_is_refused(tok):
    # renders only the last assistant answer in full: earlier answers shrink once a turn follows
    bad = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '<|im_start|>a<|im_end|>' }}"
           "{% else %}{{ '<|im_start|>' + m['content'] + '<|im_end|>' }}{% endif %}{% endfor %}")  # fmt: skip
    t = ChatTemplate(bad, tok, name="bad")
    with pytest.raises(DataError, match=r"train.jsonl:7: .*message 3 \(assistant\)"):
        t.encode(CONV, where="train.jsonl:7")


def test_a_tokenizer_without_the_template_tokens_is_a_clear_error():
    old = train(TokenizerConfig(kind="char", vocab_size=0, chat_tokens=[]), TEXT, seed=0)  # as before chat tokens
    with pytest.raises(LlmkitError, match=r"lacks <\|im_start\|>, <\|im_end\|>.*chat_template=plain"):
        resolve_template("chatml", old, data_format="chat")
    assert resolve_template("auto", old, data_format="parallel").end_of_turn_id == old.eos_id  # pairs: plain
    from llmkit.recipes.generate import Config, chat_template

    pretrained = {"path": "run/ckpt", "task": None}  # a pretrained checkpoint: raw text unless chat=true
    assert chat_template(pretrained, old, Config(out_dir=".", checkpoint="x")) is None
    with pytest.raises(LlmkitError, match="chat=true: run/ckpt was not fine-tuned with a chat template"):
        chat_template(pretrained, old, Config(out_dir=".", checkpoint="x", chat=True))


def test_template_specs_and_bad_templates(tok, tmp_path):
    assert resolve_template("auto", tok, data_format="alpaca").source == CHATML
    (tmp_path / "t.jinja").write_text("{{ messages[-1]['content'] }}", encoding="utf-8")
    assert resolve_template(str(tmp_path / "t.jinja"), tok).render(CONV) == "eine Katze"
    assert resolve_template("{{ messages[0]['content'] }}", tok).render(CONV) == "Be brief."
    with pytest.raises(ConfigError, match="not valid Jinja"):
        resolve_template("{% for m in messages %}", tok)
    with pytest.raises(ConfigError, match="expected auto, chatml, plain"):
        resolve_template("zephyr", tok)
    with pytest.raises(ConfigError, match="prompt_template"):
        plain_template("no source here")
    refuses = ChatTemplate("{{ raise_exception('only user turns') }}", tok, name="strict")
    with pytest.raises(DataError, match="only user turns"):
        refuses.render(CONV)
    with pytest.raises(DataError, match=r"^chat.jsonl:4: the chat template \(strict\) refused the conversation"):
        encode_conversations([Conversation(CONV, "chat.jsonl:4")], refuses, max_len=64)
    with pytest.raises(Exception, match="unsafe|access"):  # the sandbox: no attribute escapes
        ChatTemplate("{{ messages.__class__.__mro__ }}", tok, name="evil").render(CONV)


# ---------------------------------------------------------------------------- readers


def test_read_chat_and_its_errors_name_file_and_line(tmp_path):
    good = {"messages": CONV}
    path = _write(tmp_path / "chat.jsonl", [good, "", {"messages": CONV[1:3]}])
    convs = list(read_chat(path))
    assert [c.messages for c in convs] == [CONV, CONV[1:3]]
    assert convs[1].where.endswith("chat.jsonl:3")
    assert (convs[0].prompt, convs[0].reference, convs[0].source) == (CONV[:4], "eine Katze", "a cat")
    cases = [
        ("{not json", r"bad.jsonl:2: not valid JSON"),
        ('["a"]', r"bad.jsonl:2: a JSON list, not an object"),
        ({"text": "hi"}, r"bad.jsonl:2: no non-empty list 'messages' \(the record's fields: 'text'\)"),
        ({"messages": [{"role": "bot", "content": "x"}]}, r"bad.jsonl:2: message 1 has role 'bot'"),
        ({"messages": [{"role": "user", "content": 3}]}, r"bad.jsonl:2: message 1 \(user\) has no string 'content'"),
        ({"messages": [CONV[1], "hi"]}, r"bad.jsonl:2: message 2 is a JSON str"),
        ({"messages": CONV[:2]}, r"bad.jsonl:2: the conversation has no assistant message"),
    ]
    for row, message in cases:
        with pytest.raises(DataError, match=message):
            list(read_chat(_write(tmp_path / "bad.jsonl", [good, row])))


def test_read_alpaca_jsonl_and_json_array(tmp_path):
    rows = [{"instruction": "Translate.", "input": "a dog", "output": "ein Hund"},
            {"instruction": "Say hi.", "output": "hi"}]  # fmt: skip
    for path in (_write(tmp_path / "a.jsonl", rows), tmp_path / "a.json"):
        if not isinstance(path, str):
            path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
        convs = list(read_alpaca(path))
        assert convs[0].messages == [{"role": "user", "content": "Translate.\n\na dog"},
                                     {"role": "assistant", "content": "ein Hund"}]  # fmt: skip
        assert convs[1].messages[0]["content"] == "Say hi."
    (tmp_path / "b.json").write_text(json.dumps([rows[0], {"instruction": "x"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"b.json record 2: field 'output' is missing"):
        list(read_alpaca(tmp_path / "b.json"))
    with pytest.raises(DataError, match=r"c.jsonl:1: field 'input' is a int"):
        list(read_alpaca(_write(tmp_path / "c.jsonl", [{"instruction": "x", "input": 1, "output": "y"}])))
    with pytest.raises(DataError, match=r"d.jsonl:1: the instruction is empty"):
        list(read_alpaca(_write(tmp_path / "d.jsonl", [{"instruction": " ", "output": "y"}])))
    with pytest.raises(DataError, match="does not exist"):
        list(read_alpaca(tmp_path / "missing.jsonl"))


def test_labels_are_int64_and_targets_survive_bpe_merges_across_the_boundary(bpe):
    t = resolve_template("chatml", bpe)
    (ex,) = encode_conversations([Conversation(CONV)], t, max_len=512)
    assert ex.input_ids.dtype == ex.labels.dtype == np.int64
    kept = ex.labels[ex.labels != IGNORE]
    assert bpe.decode(kept.tolist()) == "ein Hund<|im_end|>eine Katze<|im_end|>"
