"""The prompt formatter: exact template strings, labels built by construction, image expansion, bad input."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from minillava.prompts import (
    IGNORE_INDEX,
    IMAGE,
    SHORT_ANSWER,
    TEMPLATES,
    PromptError,
    SampleTooLong,
    build_segments,
    prepare_tokenizer,
    render,
    tokenize_conversation,
    with_format_prompt,
)

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")


def conv(*turns):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


def supervised_runs(sample):
    """Contiguous runs of supervised token ids."""
    runs, current = [], []
    for lab in sample["labels"]:
        if lab == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(lab)
    return runs + ([current] if current else [])


# ----------------------------------------------------------------------------- exact strings

def test_vicuna_v1_two_rounds_exact_string():
    text = render(conv("<image>\nQ1", "A1", "Q2", "A2"), "vicuna_v1")
    assert text == f"{SYSTEM} USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>"


def test_vicuna_v1_one_round_and_generation_prompt():
    assert render(conv("<image>\nQ", "A")) == f"{SYSTEM} USER: <image>\nQ ASSISTANT: A</s>"
    assert render(conv("<image>\nQ"), for_generation=True) == f"{SYSTEM} USER: <image>\nQ ASSISTANT:"


def test_llava_v1_system_says_human():
    assert TEMPLATES["llava_v1"].system == SYSTEM.replace("user", "human")
    assert render(conv("Q", "A"), "llava_v1") == f"{SYSTEM.replace('user', 'human')} USER: Q ASSISTANT: A</s>"


def test_plain_template_discards_instruction():
    c = conv("Render a clear and concise summary of the photo.\n<image>", "a red circle")
    assert render(c, "plain") == "<image>a red circle\n"
    assert render(c[:1], "plain", for_generation=True) == "<image>"


def test_image_marker_moves_to_front():
    assert render(conv("What is this?\n<image>", "A")) == f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT: A</s>"
    assert render(conv("What <image> is this?", "A")).count("USER: <image>\nWhat  is this?") == 1


def test_format_prompt_constant_and_helper():
    assert with_format_prompt("What colour?", SHORT_ANSWER) == \
        "What colour?\nAnswer the question using a single word or phrase."


# ----------------------------------------------------------------------------- ids and labels

def test_labels_supervise_answers_and_eos_only(tokenizer):
    image_id = prepare_tokenizer(tokenizer)
    sample = tokenize_conversation(conv("<image>\nQ1", "A1", "Q2", "A2"), tokenizer, image_id, 7)
    runs = supervised_runs(sample)
    assert [tokenizer.decode(r).strip() for r in runs] == ["A1</s>", "A2</s>"]
    # everything else is masked: BOS, system, user turns, headers and all 7 image positions
    ids, labels = sample["input_ids"], sample["labels"]
    assert ids[0] == tokenizer.bos_token_id and labels[0] == IGNORE_INDEX
    assert ids.count(image_id) == 7
    assert all(lab == IGNORE_INDEX for i, lab in zip(ids, labels) if i == image_id)
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ids, labels))
    masked_text = tokenizer.decode([i for i, lab in zip(ids, labels) if lab == IGNORE_INDEX and i != image_id])
    assert "USER: Q2 ASSISTANT:" in masked_text and SYSTEM in masked_text


def test_plain_labels_are_caption_and_newline(tokenizer):
    image_id = prepare_tokenizer(tokenizer)
    sample = tokenize_conversation(conv("<image>\nDescribe.", "a red circle"), tokenizer, image_id, 5, "plain")
    assert [tokenizer.decode(r) for r in supervised_runs(sample)] == ["a red circle\n"]
    assert sample["input_ids"][:6] == [tokenizer.bos_token_id] + [image_id] * 5


def test_segment_ids_equal_whole_string_tokenization(tokenizer):
    """Segment-wise ids are the ids of the whole prompt string (one image token per marker)."""
    image_id = prepare_tokenizer(tokenizer)
    c = conv("What colour is the circle?\n<image>", "The circle is red.", "And the square?", "Blue.")
    sample = tokenize_conversation(c, tokenizer, image_id, 1)
    assert sample["input_ids"] == tokenizer(render(c))["input_ids"]


def sentencepiece_like_tokenizer():
    """A Metaspace (SentencePiece-style, prefix space) tokenizer, like Llama-2/Vicuna's."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = [SYSTEM, "USER: What colour is the circle?\nASSISTANT: The circle is red. And the square? Blue."] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_sentencepiece_style_tokenizer_gets_in_context_tokens():
    """No stray prefix-space tokens at segment starts: ids equal the whole string's, answers start with '▁'."""
    tok = sentencepiece_like_tokenizer()
    image_id = prepare_tokenizer(tok)
    c = conv("What colour is the circle?\n<image>", "The circle is red.", "And the square?", "Blue.")
    sample = tokenize_conversation(c, tok, image_id, 1)
    assert sample["input_ids"] == tok(render(c))["input_ids"]  # this tokenizer adds no BOS
    first_answer_token = tok.convert_ids_to_tokens(supervised_runs(sample)[0][0])
    assert first_answer_token.startswith("▁") and first_answer_token != "▁"


def test_generation_prompt_is_training_prefix(tokenizer):
    """At inference the model sees exactly the tokens it was trained on up to 'ASSISTANT:'."""
    image_id = prepare_tokenizer(tokenizer)
    train = tokenize_conversation(conv("<image>\nQ1", "A1"), tokenizer, image_id, 4)
    prompt = tokenize_conversation(conv("<image>\nQ1"), tokenizer, image_id, 4, for_generation=True)
    assert train["input_ids"][:len(prompt["input_ids"])] == prompt["input_ids"]
    first_supervised = next(i for i, lab in enumerate(train["labels"]) if lab != IGNORE_INDEX)
    assert first_supervised == len(prompt["input_ids"])
    assert set(prompt["labels"]) == {IGNORE_INDEX}


def test_per_image_counts_and_multi_image(tokenizer):
    image_id = prepare_tokenizer(tokenizer)
    sample = tokenize_conversation(conv("<image> left, <image> right: differ?", "Yes."), tokenizer, image_id, [3, 5])
    ids = sample["input_ids"]
    first = ids.index(image_id)
    assert ids[first:first + 3] == [image_id] * 3 and ids[first + 3] != image_id
    assert ids.count(image_id) == 8


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("conversation, message", [
    ([], "empty conversation"),
    (conv("Q", "A")[::-1], "expected 'human'"),
    ([{"from": "human", "value": "Q"}, {"from": "human", "value": "Q"}], "expected 'gpt'"),
    ([{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A <image>"}], "answer"),
    (conv("<image>\nQ"), "must end with a gpt turn"),
    ([{"from": "human"}], "'from' and 'value'"),
])
def test_bad_conversations_raise(tokenizer, conversation, message):
    image_id = prepare_tokenizer(tokenizer)
    with pytest.raises(PromptError, match=message):
        tokenize_conversation(conversation, tokenizer, image_id, [4])


def test_image_count_mismatch_raises(tokenizer):
    image_id = prepare_tokenizer(tokenizer)
    with pytest.raises(PromptError, match="1 <image> marker.*2 image"):
        tokenize_conversation(conv("<image>\nQ", "A"), tokenizer, image_id, [4, 4])
    with pytest.raises(PromptError, match="0 <image> marker.*1 image"):  # an image record without its marker
        tokenize_conversation(conv("Q", "A"), tokenizer, image_id, [4])


def test_truncation_never_cuts_an_image_block(tokenizer):
    image_id = prepare_tokenizer(tokenizer)
    c = conv("<image>\nQ", "A long answer " * 20)
    full = tokenize_conversation(c, tokenizer, image_id, 10)
    cut = tokenize_conversation(c, tokenizer, image_id, 10, max_length=len(full["input_ids"]) - 5)
    assert cut["input_ids"] == full["input_ids"][:-5] and len(cut["labels"]) == len(cut["input_ids"])
    with pytest.raises(SampleTooLong, match="image block"):
        tokenize_conversation(c, tokenizer, image_id, 10, max_length=20)


def test_truncation_that_leaves_no_answer_is_dropped(tokenizer):
    image_id = prepare_tokenizer(tokenizer)
    c = conv("<image>\nQ", "A")
    prompt = tokenize_conversation(conv("<image>\nQ"), tokenizer, image_id, 4, for_generation=True)
    prompt_len = len(prompt["input_ids"])
    with pytest.raises(SampleTooLong, match="no supervised token"):
        tokenize_conversation(c, tokenizer, image_id, 4, max_length=prompt_len)


def test_tokenizer_without_image_token_gets_one():
    tok = sentencepiece_like_tokenizer()
    assert IMAGE not in tok.get_vocab() and tok.pad_token is None
    image_id = prepare_tokenizer(tok)
    assert tok.convert_ids_to_tokens(image_id) == IMAGE and tok.pad_token == "<unk>"
    assert tok(f"a{IMAGE}b", add_special_tokens=False)["input_ids"].count(image_id) == 1


def test_segments_concatenate_to_render():
    c = conv("<image>\nQ1", "A1", "Q2", "A2")
    segs = build_segments(c)
    assert "".join(s.text for s in segs) == render(c)
    assert [s.kind for s in segs] == ["context", "image", "context", "answer", "context", "answer"]
