"""SQuAD JSON reading, windows over long contexts, and answers decoded back from span logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmkit.data.squad import QARecord, encode_squad, read_squad, tokens_with_offsets, window_starts
from llmkit.errors import DataError
from llmkit.finetune.qa import Decoding, best_answer, window_candidates
from llmkit.tokenizer import TokenizerConfig, train
from llmkit.tokenizer.hf import HFTokenizer

WORDS = ("the of and in to was a is for on as by with he that at from his it an were are which this be or first "
         "new two one their after its also has but had city year who they not during been normans france river "
         "rollo king duke century 911 10th viking north people name fought battle army england kings william "
         "conquest what country normandy located leader raiders year did swear fealty gave capital").split()  # fmt: skip
CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region "
           "in France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, "
           "under their leader Rollo, agreed to swear fealty to King Charles III of West Francia in 911.")  # fmt: skip


def _squad(version: str = "v2.0") -> dict:
    def qa(i, q, text=None, impossible=False):
        answers = [] if text is None else [{"text": text, "answer_start": CONTEXT.index(text)}]
        return {"id": f"q{i}", "question": q, "answers": answers, **({"is_impossible": impossible} if version == "v2.0" else {})}

    return {"version": version, "data": [
        {"title": "Normans", "paragraphs": [{"context": CONTEXT, "qas": [
            qa(0, "In what country is Normandy located?", "France"),
            qa(1, "Who was the leader of the raiders?", "Rollo"),
            qa(2, "In what year did they swear fealty?", "911"),
        ]}]},
        {"title": "Other", "paragraphs": [{"context": CONTEXT, "qas": [
            qa(3, "Who gave their name to Normandy?", "The Normans"),
            *([qa(4, "What is the capital of Normandy?", impossible=True)] if version == "v2.0" else []),
        ]}]},
    ]}  # fmt: skip


def _write(tmp_path: Path, obj) -> Path:
    p = tmp_path / "squad.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=1), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def char_tok():
    cfg = TokenizerConfig(kind="char", vocab_size=0, character_coverage=1.0, byte_fallback=True,
                          user_special_tokens=["[CLS]", "[SEP]", "[MASK]"])  # fmt: skip
    return train(cfg, [CONTEXT + " ?" + "".join(sorted(set(json.dumps(_squad()))))] * 3, seed=0)


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory) -> Path:
    """A BERT WordPiece vocab.txt (words, then every character and its ## form)."""
    chars = sorted(set(CONTEXT.lower() + "?abcdefghijklmnopqrstuvwxyz0123456789"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *chars, *(f"##{c}" for c in chars)]
    d = tmp_path_factory.mktemp("wp")
    (d / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    return d


def _wp_tokenizer(d: Path) -> HFTokenizer:
    return HFTokenizer({f: (d / f).read_bytes() for f in ("vocab.txt", "tokenizer_config.json")}, source=str(d))


# ---------------------------------------------------------------------------- reading


@pytest.mark.parametrize("version", ["v1.1", "v2.0"])
def test_squad_1_and_2_files_read_question_by_question(tmp_path, version):
    recs = read_squad(_write(tmp_path, _squad(version)))
    assert [r.id for r in recs] == ["q0", "q1", "q2", "q3", "q4"][: 5 if version == "v2.0" else 4]
    assert recs[0] == QARecord("q0", "In what country is Normandy located?", CONTEXT, ("France",),
                               (CONTEXT.index("France"),), "Normans")  # fmt: skip
    assert [r.is_impossible for r in recs] == [False] * 4 + ([True] if version == "v2.0" else [])
    assert [r.id for r in read_squad(tmp_path / "squad.json", articles=[1])] == ["q3", "q4"][: 2 if version == "v2.0" else 1]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("data"), r"squad\.json \(top level\): no 'data' field"),
    (lambda d: d["data"][1]["paragraphs"][0].pop("context"), r"data\[1\]\.paragraphs\[0\]: no 'context' field"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][1].pop("question"), r"qas\[1\] \(id q1\): no 'question' field"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][2]["answers"][0].update(answer_start="12"),
     r"qas\[2\] \(id q2\) answer 0: 'answer_start' must be a int, got str"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start=3),
     r"qas\[0\] \(id q0\) answer 0: 'France' is not at character 3 of its context \(there: ' Norma'\)"),
    (lambda d: d["data"][1]["paragraphs"][0]["qas"][1]["answers"].append({"text": "x", "answer_start": 0}),
     r"qas\[1\] \(id q4\): marked is_impossible but has 1 answer"),
    (lambda d: d["data"][1]["paragraphs"][0]["qas"][0]["answers"].clear(), r"\(id q3\): no answers \(and not marked"),
])  # fmt: skip
def test_a_malformed_record_is_named_by_file_and_path(tmp_path, edit, message):
    data = _squad()
    edit(data)
    with pytest.raises(DataError, match=message):
        read_squad(_write(tmp_path, data))


def test_broken_json_and_bad_article_indices_are_named(tmp_path):
    with pytest.raises(DataError, match=r"squad\.json:3: not valid JSON"):
        read_squad(_write(tmp_path, '{"data": [\n{"title": "x",\n "paragraphs": ]}'))
    with pytest.raises(DataError, match=r"has 2 articles; data\.\*_articles names \[5\]"):
        read_squad(_write(tmp_path, _squad()), articles=[5])


# ---------------------------------------------------------------------------- windows


def test_window_starts_share_doc_stride_tokens_and_reach_the_end():
    assert window_starts(10, 20, 4) == [0]
    assert window_starts(20, 8, 3) == [0, 5, 10, 15]  # the last window [15, 20) reaches the end; [10, 18) does not
    for n, room, stride in [(100, 17, 5), (33, 10, 9), (7, 3, 0)]:
        starts = window_starts(n, room, stride)
        assert all(b - a == room - stride for a, b in zip(starts, starts[1:]))
        assert starts[-1] + room >= n > starts[-2] + room if len(starts) > 1 else n <= room


def _gold_round_trip(recs, examples, decoding=Decoding()) -> list[str]:
    """Each question's answer decoded from logits that put all their mass on the windows' labels."""
    out = []
    for r, rec in enumerate(recs):
        wins = []
        for e in (e for e in examples if e.record == r):
            start, end = np.zeros(len(e.input_ids)), np.zeros(len(e.input_ids))
            start[e.labels[0]] += 10.0
            end[e.labels[1]] += 10.0
            wins.append((start, end, e.offsets))
        out.append(best_answer(wins, rec.context, decoding)[0])
    return out


@pytest.mark.parametrize("kind", ["char", "wordpiece"])
@pytest.mark.parametrize("max_len, stride", [(384, 128), (40, 8), (28, 3)])
def test_windows_fit_and_gold_logits_decode_to_the_gold_answer(tmp_path, char_tok, wordpiece, kind, max_len, stride):
    tok = char_tok if kind == "char" else _wp_tokenizer(wordpiece)
    recs = read_squad(_write(tmp_path, _squad()))
    examples = encode_squad(recs, tok, max_len=max_len, doc_stride=stride)
    ctx, _ = tokens_with_offsets(tok, CONTEXT)
    for r, rec in enumerate(recs):
        wins = [e for e in examples if e.record == r]
        assert (len(wins) > 1) == (max_len < 100)
        q = min(len(tok.encode(rec.question)), max_len // 2)  # long questions are cut to half the window
        seen = []
        for w in wins:
            assert len(w.input_ids) <= max_len and w.input_ids[0] == tok.cls_id and w.input_ids[-1] == tok.sep_id
            assert list(w.token_type_ids) == [0] * (q + 2) + [1] * (len(w.input_ids) - q - 2)
            seen.append(list(w.input_ids[q + 2 : -1]))
            s, e = w.labels
            if s:  # the answer lies in this window: its tokens cover it
                assert w.offsets[s, 0] <= rec.answer_starts[0] and w.offsets[e, 1] >= rec.answer_starts[0] + len(rec.answers[0])
        rebuilt = seen[0] + [t for prev, w in zip(seen, seen[1:]) for t in w[stride:]]
        assert rebuilt == ctx  # windows overlap by doc_stride tokens and cover the context once
        assert any(w.labels[0] > 0 for w in wins) != rec.is_impossible
    assert _gold_round_trip(recs, examples) == [r.answers[0] if r.answers else "" for r in recs]


class _NoOffsets:
    """A tokenizer that tracks no character offsets (as llmkit's SentencePiece ones)."""

    def __init__(self, tok) -> None:
        self.tok = tok
        self.cls_id, self.sep_id = tok.cls_id, tok.sep_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)


def test_without_offsets_answers_are_found_back_word_by_word(tmp_path, char_tok):
    recs = read_squad(_write(tmp_path, _squad()))
    examples = encode_squad(recs, _NoOffsets(char_tok), max_len=40, doc_stride=8)
    # every piece of a word carries the word's span: "France." for "France", the same answer to SQuAD's scoring
    assert _gold_round_trip(recs, examples) == ["France.", "Rollo,", "911.", "The Normans", ""]


def test_windows_match_a_transformers_tokenizer_with_stride(tmp_path, wordpiece):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(str(wordpiece))
    recs = read_squad(_write(tmp_path, _squad()))
    ours = encode_squad(recs, _wp_tokenizer(wordpiece), max_len=40, doc_stride=8)
    for r, rec in enumerate(recs):
        enc = theirs(rec.question, rec.context, truncation="only_second", max_length=40, stride=8,
                     return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip
        mine = [e for e in ours if e.record == r]
        assert [list(e.input_ids) for e in mine] == enc["input_ids"]
        for e, offsets, types in zip(mine, enc["offset_mapping"], enc["token_type_ids"]):
            ctx = np.asarray(types) == 1
            ctx[-1] = False  # the final [SEP]
            assert e.offsets[ctx].tolist() == np.asarray(offsets)[ctx].tolist()


# ---------------------------------------------------------------------------- decoding


def test_candidates_are_context_spans_within_max_answer_len():
    offsets = np.array([[-1, -1], [-1, -1], [0, 3], [4, 7], [8, 11], [12, 15], [-1, -1]])  # [CLS] q | 4 words | [SEP]
    start = np.array([9.0, 8.0, 1.0, 5.0, 0.0, 0.0, 7.0])
    end = np.array([9.0, 8.0, 0.0, 0.0, 1.0, 4.0, 7.0])
    got = sorted(window_candidates(start, end, offsets, n_best=20, max_answer_len=30), reverse=True)
    assert got[0] == (9.0, 4, 15)  # start token 3 + end token 5; [CLS], question and [SEP] never count
    assert all(s <= e for _, s, e in got) and len(got) == 4 + 3 + 2 + 1  # starts 2..5, each with the ends at or after it
    assert max(window_candidates(start, end, offsets, n_best=20, max_answer_len=2))[1:] == (4, 11)
    # n_best=2: starts {0, 1} are not context tokens, ends {0, 1} neither: nothing to pair
    assert window_candidates(start, end, offsets, n_best=2, max_answer_len=30) == []


def test_no_answer_when_the_null_score_wins_by_more_than_the_threshold():
    offsets = np.array([[-1, -1], [0, 5], [6, 11], [-1, -1]])
    context = "hello world"
    windows = [(np.array([3.0, 2.0, 0.0, 0.0]), np.array([3.0, 0.0, 2.5, 0.0]), offsets)]  # null 6, best span 4.5
    assert best_answer(windows, context, Decoding())[0] == ""
    assert best_answer(windows, context, Decoding(null_score_diff_threshold=1.5))[0] == "hello world"
    assert best_answer(windows, context, Decoding(allow_null=False))[0] == "hello world"  # SQuAD 1.1 data
    # the null score is the lowest over a question's windows: a second window with a weak [CLS] lets the span win
    second = (np.array([-5.0, 0.0, 0.0, 0.0]), np.array([-5.0, 0.0, 0.0, 0.0]), offsets)
    assert best_answer([*windows, second], context, Decoding())[0] == "hello world"


def test_unanswerable_drop_keeps_the_answerable_questions_in_their_order(tmp_path):
    from llmkit.data.config import DataConfig
    from llmkit.errors import LlmkitError
    from llmkit.finetune.tasks import load_task_data

    path = str(_write(tmp_path, _squad()))
    keep = load_task_data("qa", DataConfig(train_path=path, eval_path=path), "train")
    drop = load_task_data("qa", DataConfig(train_path=path, eval_path=path, unanswerable="drop"), "train")
    assert [r.id for r in keep] == ["q0", "q1", "q2", "q3", "q4"]
    assert [r.id for r in drop] == ["q0", "q1", "q2", "q3"] and not any(r.is_impossible for r in drop)
    only_impossible = _squad()
    only_impossible["data"][1]["paragraphs"][0]["qas"] = only_impossible["data"][1]["paragraphs"][0]["qas"][1:]
    path = str(_write(tmp_path, only_impossible))
    with pytest.raises(LlmkitError, match=r"unanswerable=drop left no eval questions"):
        load_task_data("qa", DataConfig(eval_path=path, eval_articles=[1], unanswerable="drop"), "eval")
