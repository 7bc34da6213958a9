"""MiniLlava: the image-token splice, loss, text-only and multi-image batches, generation, save/load."""

import pytest
import torch
import torch.nn.functional as F
from conftest import make_image

from minillava.data import pad_batch
from minillava.model import MiniLlava
from minillava.prompts import IGNORE_INDEX, tokenize_conversation


def sample(model, question, answer=None, n_images=1):
    conv = [{"from": "human", "value": "<image>\n" * n_images + question}]
    if answer is not None:
        conv.append({"from": "gpt", "value": answer})
    return tokenize_conversation(conv, model.tokenizer, model.image_token_id, model.encoder.num_features,
                                 for_generation=answer is None)


def test_image_positions_hold_projected_features(model):
    s = sample(model, "What is it?", "A circle.")
    ids = torch.tensor([s["input_ids"]])
    pixels = model.encoder.preprocess([make_image(40, 30)])
    embeds = model.embed(ids, pixels)
    mask = ids[0] == model.image_token_id
    torch.testing.assert_close(embeds[0, mask], model.connector(model.encoder(pixels))[0])
    torch.testing.assert_close(embeds[0, ~mask], model.lm.get_input_embeddings()(ids)[0, ~mask])


def test_loss_is_token_averaged_cross_entropy(model):
    batch = pad_batch([sample(model, "What is it?", "A red circle."), sample(model, "Colour?", "Blue.")],
                      model.tokenizer.pad_token_id)
    pixels = model.encoder.preprocess([make_image(32, 32), make_image(20, 30, seed=2)])
    out = model(batch["input_ids"], pixels, batch["attention_mask"], batch["labels"])
    full = model(batch["input_ids"], pixels, batch["attention_mask"]).logits  # (B, T, V): every position
    logits, labels = full[:, :-1], batch["labels"][:, 1:]
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, expected)
    # with labels, the head ran only where the next token is labelled: one row per labelled token
    assert out.logits.shape == (int((labels != IGNORE_INDEX).sum()), full.shape[-1])
    torch.testing.assert_close(out.logits, logits[labels != IGNORE_INDEX])


def mixed_batch(model, hd=False):
    """Rows with two images and two rounds, text only, one image and padding; image sizes for HD."""
    images = [make_image(40, 30), make_image(24, 48, seed=1), make_image(32, 32, seed=2)]
    prepared = [model.prepare_image(im, "pad") for im in images]  # HD: each image's token count depends on its size
    two_rounds = tokenize_conversation(
        [{"from": "human", "value": "<image>\n<image>\nSame shapes?"}, {"from": "gpt", "value": "No."},
         {"from": "human", "value": "Which is larger?"}, {"from": "gpt", "value": "The first one, by far."}],
        model.tokenizer, model.image_token_id, [p["n_tokens"] for p in prepared[:2]])
    last = tokenize_conversation([{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}],
                                 model.tokenizer, model.image_token_id, [prepared[2]["n_tokens"]])
    text = tokenize_conversation([{"from": "human", "value": "Hi there, how many sides has a square?"},
                                  {"from": "gpt", "value": "Four."}], model.tokenizer, model.image_token_id)
    batch = pad_batch([two_rounds, text, last], model.tokenizer.pad_token_id)
    pixels = torch.cat([p["pixel_values"] for p in prepared])
    return batch, pixels, [p["image_size"] for p in prepared] if hd else None


@pytest.mark.parametrize("hd", [False, True], ids=["base", "hd"])
def test_selected_positions_loss_and_gradients_equal_the_full_ones(model, clip_dir, llm_dir, hd):
    """The head on labelled positions only (#21) against transformers' own loss on every position's logits:
    padding, a text-only row, two images and two rounds in a row, and the HD grid."""
    from minillava.hd import HDConfig

    if hd:
        torch.manual_seed(0)
        model = MiniLlava.from_backbones(str(clip_dir), str(llm_dir), hd=HDConfig(max_cells=4))
    model.train()
    batch, pixels, sizes = mixed_batch(model, hd)
    assert (batch["attention_mask"] == 0).any()  # padding is in the batch
    trained = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(selected: bool):
        model.zero_grad()
        if selected:
            loss = model(batch["input_ids"], pixels, batch["attention_mask"], batch["labels"], image_sizes=sizes).loss
        else:  # transformers' loss on the full (B, T, V) logits
            embeds = model.embed(batch["input_ids"], pixels, sizes)
            loss = model.lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trained]

    (ours, ours_grads), (full, full_grads) = loss_and_grads(True), loss_and_grads(False)
    torch.testing.assert_close(ours, full, atol=1e-6, rtol=0)
    for a, b in zip(ours_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # the comparison can fail: one labelled position dropped, or the targets shifted by one, changes the loss
    with torch.no_grad():
        logits = model(batch["input_ids"], pixels, batch["attention_mask"], image_sizes=sizes).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        dropped = keep.clone()
        dropped[0, keep[0].nonzero()[0]] = False
        shifted = batch["labels"][:, :-1]
        for mask, target in ((dropped, targets), (keep, shifted)):
            other = F.cross_entropy(logits[mask], target[mask].clamp(min=0))
            assert abs(float(other) - float(full)) > 1e-4


def test_mismatched_image_token_count_raises_with_both_counts(model):
    s = sample(model, "What is it?", "A circle.")
    first = s["input_ids"].index(model.image_token_id)
    ids = torch.tensor([s["input_ids"][:first] + s["input_ids"][first + 1:]])  # one image position short
    pixels = model.encoder.preprocess([make_image(32, 32)])
    with pytest.raises(ValueError, match="15 image-token positions.*1 image.*16 features"):
        model(ids, pixels)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(torch.tensor([s["input_ids"]]))


def test_text_only_row_in_image_batch(model):
    image_s = sample(model, "What is it?", "A circle.")
    text_s = tokenize_conversation([{"from": "human", "value": "Hello?"}, {"from": "gpt", "value": "Hi."}],
                                   model.tokenizer, model.image_token_id)
    batch = pad_batch([text_s, image_s], model.tokenizer.pad_token_id)
    pixels = model.encoder.preprocess([make_image(32, 32)])
    logits = model(batch["input_ids"], pixels, batch["attention_mask"]).logits
    alone = model(torch.tensor([text_s["input_ids"]])).logits
    n = len(text_s["input_ids"])
    torch.testing.assert_close(logits[0, :n], alone[0], atol=1e-5, rtol=1e-4)


def test_several_images_per_sample_fill_in_order(model):
    s = sample(model, "Compare.", "Same.", n_images=2)
    ids = torch.tensor([s["input_ids"]])
    images = [make_image(32, 32, seed=1), make_image(32, 32, seed=2)]
    pixels = model.encoder.preprocess(images)
    embeds = model.embed(ids, pixels)
    features = model.image_features(pixels)  # (2 * 16, H): image 0's features, then image 1's
    positions = (ids[0] == model.image_token_id).nonzero().squeeze(1)
    torch.testing.assert_close(embeds[0, positions[:16]], features[:16])
    torch.testing.assert_close(embeds[0, positions[16:]], features[16:])


def test_text_only_batch_keeps_connector_in_graph(model):
    model.train()
    s = tokenize_conversation([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}],
                              model.tokenizer, model.image_token_id)
    loss = model(torch.tensor([s["input_ids"]]), labels=torch.tensor([s["labels"]])).loss
    loss.backward()
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in model.connector.parameters())


def test_batched_generation_equals_one_by_one(model):
    questions = ["What is it?", "What colour is the big shape on the left side?"]
    images = [make_image(32, 32, seed=3), make_image(48, 24, seed=4)]
    prompts = [sample(model, q) for q in questions]
    batch = pad_batch(prompts, model.tokenizer.pad_token_id, padding_side="left")
    assert batch["attention_mask"][0, 0] == 0  # the shorter prompt is left-padded
    pixels = model.encoder.preprocess(images)
    together = model.generate(batch["input_ids"], pixels, batch["attention_mask"], max_new_tokens=6)
    assert together.shape[0] == 2 and together.shape[1] <= 6
    for row, p in enumerate(prompts):
        alone = model.generate(torch.tensor([p["input_ids"]]), pixels[row:row + 1], max_new_tokens=6)[0]
        assert together[row, :len(alone)].tolist() == alone.tolist()
    with pytest.raises(ValueError, match="left padding"):
        right = pad_batch(prompts, model.tokenizer.pad_token_id, padding_side="right")
        model.generate(right["input_ids"], pixels, right["attention_mask"])


def test_generation_without_kv_cache_gives_the_same_tokens(model):
    prompts = [sample(model, q) for q in ["What is it?", "What colour is the big shape on the left side?"]]
    batch = pad_batch(prompts, model.tokenizer.pad_token_id, padding_side="left")  # row 0 is left-padded
    pixels = model.encoder.preprocess([make_image(32, 32, seed=3), make_image(48, 24, seed=4)])
    cached = model.generate(batch["input_ids"], pixels, batch["attention_mask"], max_new_tokens=8)
    recomputed = model.generate(batch["input_ids"], pixels, batch["attention_mask"], max_new_tokens=8,
                                use_cache=False)
    assert recomputed.tolist() == cached.tolist()
    with pytest.raises(ValueError, match="greedy"):
        model.generate(batch["input_ids"], pixels, batch["attention_mask"], temperature=0.7, use_cache=False)


def test_generation_stops_at_eos_and_pads_finished_rows(model):
    eos, pad = model.tokenizer.eos_token_id, model.tokenizer.pad_token_id
    prompts = [sample(model, "What is it?"), sample(model, "Which shape is the biggest one?")]
    batch = pad_batch(prompts, pad, padding_side="left")
    pixels = model.encoder.preprocess([make_image(32, 32), make_image(32, 32, seed=1)])
    free = model.generate(batch["input_ids"], pixels, batch["attention_mask"], max_new_tokens=8)
    assert free.shape[1] == 8 and not (free == eos).any()  # random weights: no EOS by chance here

    def force_eos_in_row0_at_third_token(module, inputs, logits):
        force_eos_in_row0_at_third_token.calls += 1  # one LM forward per new token (the first is the prompt)
        if force_eos_in_row0_at_third_token.calls == 3:
            logits[0, -1, eos] = 1e4
        return logits
    force_eos_in_row0_at_third_token.calls = 0
    handle = model.lm.lm_head.register_forward_hook(force_eos_in_row0_at_third_token)
    try:
        out = model.generate(batch["input_ids"], pixels, batch["attention_mask"], max_new_tokens=8)
    finally:
        handle.remove()
    assert out[0, :3].tolist() == free[0, :2].tolist() + [eos]  # row 0 ends with EOS at step 3 ...
    assert (out[0, 3:] == pad).all()  # ... and is padded after it
    assert out[1].tolist() == free[1].tolist()  # row 1 runs on unchanged


def test_answer_returns_text_for_image_and_text_only_questions(model):
    answers = model.answer([make_image(40, 30), None], ["What is it?", "Say hi."], max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_save_and_load_round_trip(model, tmp_path):
    s = sample(model, "What is it?", "A circle.")
    ids, pixels = torch.tensor([s["input_ids"]]), model.encoder.preprocess([make_image(32, 32)])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = MiniLlava.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(ids, pixels).logits, model(ids, pixels).logits)
    assert loaded.image_token_id == model.image_token_id and len(loaded.tokenizer) == len(model.tokenizer)
    with pytest.raises(FileNotFoundError, match="MiniLlava folder"):
        MiniLlava.from_pretrained(tmp_path / "nothing")


def test_save_with_a_gathered_state_dict(model, tmp_path):
    """The trainer saves ZeRO-3/FSDP models from ``accelerator.get_state_dict``: an explicit state dict whose
    tensors may share memory (tied embeddings) must round-trip too."""
    s = sample(model, "What is it?", "A circle.")
    ids, pixels = torch.tensor([s["input_ids"]]), model.encoder.preprocess([make_image(32, 32)])
    state = {k: v * 1 for k, v in model.state_dict().items()}  # copies, as a gather gives
    state["lm.lm_head.weight"] = state["lm.model.embed_tokens.weight"]  # shared memory, as tied weights are
    model.lm.lm_head.weight.data.copy_(model.lm.model.embed_tokens.weight.data)
    model.save_pretrained(tmp_path, state_dict=state)
    loaded = MiniLlava.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(ids, pixels).logits, model(ids, pixels).logits)


def test_chat_is_multi_turn_and_streams(model, capsys):
    """`chat` answers the last question with the whole conversation as context (the image before the first
    question), gives what `answer` gives for a single turn, and streams exactly the reply it returns."""
    from transformers import TextStreamer

    image = make_image(40, 30, seed=3)
    model.eval()
    first = [{"from": "human", "value": "What is it?"}]
    assert model.chat(image, first, max_new_tokens=6) == model.answer([image], ["What is it?"], max_new_tokens=6)[0]
    streamer = TextStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    capsys.readouterr()
    reply = model.chat(image, first, max_new_tokens=6, streamer=streamer)
    assert capsys.readouterr().out.strip() == reply
    # a follow-up is asked with the first round in context: its prompt holds both questions and the reply
    later = first + [{"from": "gpt", "value": reply}, {"from": "human", "value": "And the colour?"}]
    seen = []
    model.generate, original = (lambda ids, *a, **k: seen.append(ids) or original(ids, *a, **k)), model.generate
    try:
        model.chat(image, later, max_new_tokens=2)
    finally:
        del model.generate
    prompt = model.tokenizer.decode(seen[0][0][seen[0][0] != model.image_token_id])
    assert prompt.index("What is it?") < prompt.index("And the colour?") and prompt.rstrip().endswith("ASSISTANT:")
    assert int((seen[0] == model.image_token_id).sum()) == model.encoder.num_features  # one image, once
    with pytest.raises(ValueError, match="end with a human turn"):
        model.chat(image, later[:2])


def test_chat_command_talks_until_an_empty_line(model, tmp_path, monkeypatch, capsys):
    from minillava.cli import main

    model.save_pretrained(tmp_path / "m")
    make_image(40, 30).save(tmp_path / "a.png")
    questions = iter(["What is it?", "And the colour?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": print(prompt, end="") or next(questions))
    main(["chat", "--model", str(tmp_path / "m"), "--image", str(tmp_path / "a.png"), "--max-new-tokens", "3"])
    out = capsys.readouterr().out
    assert out.count("USER: ") == 3 and out.count("ASSISTANT: ") == 2
    (tmp_path / "broken.png").write_text("not a picture")
    for image, message in (("missing.png", "no such file"), ("broken.png", "not a readable image")):
        with pytest.raises(SystemExit, match=message):
            main(["chat", "--model", str(tmp_path / "m"), "--image", str(tmp_path / image), "--question", "Hi?"])


def test_commands_refuse_an_unknown_connector_before_any_work(tmp_path, capsys):
    from minillava.cli import main

    for argv in (["run", "toy", "--fast", "--out", str(tmp_path / "run")],
                 ["train", "recipe.yaml", "--vision", "v", "--llm", "l", "--out", str(tmp_path / "train")],
                 ["plan", "--recipe", "recipe.yaml"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv + ["--connector", "mlp2x_relu"])
        assert exit_.value.code == 2 and "unknown connector 'mlp2x_relu'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was started
    main(["plan", "--recipe", "configs/recipes/llava15-7b-stage1.yaml", "--connector", "linear"])
    assert f"connector {1024 * 4096 + 4096:,}" in capsys.readouterr().out  # CLIP-L's 1024 -> Vicuna-7B's 4096
