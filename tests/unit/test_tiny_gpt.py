"""TinyGPT model, its config validation and the character tokenizer."""

from __future__ import annotations

import math
import re

import pytest
import torch

from infermesh.models.tiny_gpt import CharTokenizer, TinyGPT, TinyGPTConfig

VOCAB = "\n abcdefghijklmnopqrstuvwxyz():=_."


def small_model(**overrides: object) -> TinyGPT:
    fields: dict[str, object] = {
        "vocab_size": len(VOCAB),
        "block_size": 16,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
    }
    fields.update(overrides)
    torch.manual_seed(0)
    return TinyGPT(TinyGPTConfig(**fields))  # type: ignore[arg-type]


def test_forward_returns_logits_for_every_position() -> None:
    model = small_model()
    idx = torch.randint(0, len(VOCAB), (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, len(VOCAB))
    assert loss is None


def test_loss_is_finite_and_close_to_uniform_at_initialisation() -> None:
    model = small_model()
    idx = torch.randint(0, len(VOCAB), (4, 16))
    _, loss = model(idx, torch.randint(0, len(VOCAB), (4, 16)))
    assert loss is not None
    assert torch.isfinite(loss)
    assert abs(loss.item() - math.log(len(VOCAB))) < 0.5


def test_attention_is_causal() -> None:
    model = small_model().eval()
    idx = torch.randint(0, len(VOCAB), (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % len(VOCAB)
    logits, _ = model(idx)
    logits_changed, _ = model(changed)
    torch.testing.assert_close(logits[0, :8], logits_changed[0, :8])


def test_input_longer_than_block_size_is_rejected_naming_the_setting() -> None:
    model = small_model()
    with pytest.raises(ValueError, match=re.escape("model.block_size")):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("n_head", 3, "n_embd must be divisible by model.n_head"),
        ("n_layer", 0, "model.n_layer must be a positive integer, got 0"),
        ("vocab_size", -1, "model.vocab_size must be a positive integer, got -1"),
        ("block_size", 2.5, "model.block_size must be a positive integer, got 2.5"),
        ("dropout", 1.0, "model.dropout must be in [0, 1), got 1.0"),
    ],
)
def test_config_validation_errors_name_the_field_and_value(
    field: str, value: object, words: str
) -> None:
    fields: dict[str, object] = {"vocab_size": 10, "n_embd": 32, "n_head": 4, field: value}
    with pytest.raises(ValueError) as info:
        TinyGPTConfig(**fields)  # type: ignore[arg-type]
    assert words in str(info.value)


def test_config_round_trips_through_a_plain_dict() -> None:
    cfg = TinyGPTConfig(vocab_size=10, n_layer=2, dropout=0.1)
    assert TinyGPTConfig.from_dict(cfg.to_dict()) == cfg


def test_tokenizer_round_trips_text_in_its_vocabulary() -> None:
    tok = CharTokenizer(VOCAB)
    text = "def f(x):\n    return x.y_z\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(VOCAB)


def test_unknown_characters_encode_to_the_fallback_character() -> None:
    tok = CharTokenizer(VOCAB)
    assert tok.decode(tok.encode("aé€Zb")) == "a   b"
    assert tok.encode("é") == [tok.unknown_id] == [VOCAB.index(" ")]


def test_encode_tensor_agrees_with_encode() -> None:
    tok = CharTokenizer(VOCAB)
    text = "abc déf\n(x) = y_Z€\U0001f600"
    assert tok.encode_tensor(text).tolist() == tok.encode(text)
    assert tok.encode_tensor("").tolist() == []


def test_tokenizer_survives_a_checkpoint_round_trip() -> None:
    tok = CharTokenizer.from_text("hello world", unknown="_")
    again = CharTokenizer.from_dict(tok.to_dict())
    assert again.vocab == tok.vocab == " _dehlorw"
    assert again.encode("hex") == tok.encode("hex")


def test_tokenizer_rejects_a_fallback_outside_its_vocabulary() -> None:
    with pytest.raises(ValueError, match=re.escape("fallback character 'Q'")):
        CharTokenizer("abc ", unknown="Q")


def test_decode_rejects_ids_outside_the_vocabulary() -> None:
    tok = CharTokenizer(VOCAB)
    with pytest.raises(ValueError, match=re.escape(f"token id {len(VOCAB)} is outside")):
        tok.decode([0, len(VOCAB)])


def test_generate_appends_exactly_max_new_tokens() -> None:
    model = small_model()
    prompt = torch.zeros(2, 3, dtype=torch.long)
    out = model.generate(prompt, max_new_tokens=20, top_k=5)
    assert out.shape == (2, 23)
    assert torch.equal(out[:, :3], prompt)
    assert int(out.max()) < len(VOCAB)


def test_generate_is_reproducible_with_a_seeded_generator() -> None:
    model = small_model()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    a = model.generate(prompt, 10, generator=torch.Generator().manual_seed(7))
    b = model.generate(prompt, 10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_generate_with_temperature_zero_is_greedy() -> None:
    model = small_model()
    prompt = torch.tensor([[1, 2, 3]])
    out = model.generate(prompt, 1, temperature=0.0)
    logits, _ = model.eval()(prompt)
    assert out[0, -1] == logits[0, -1].argmax()


def test_generate_restores_training_mode() -> None:
    model = small_model(dropout=0.1).train()
    model.generate(torch.zeros(1, 1, dtype=torch.long), 2)
    assert model.training
