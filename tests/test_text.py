"""Tokenizers (GPT-2 BPE without a hub, caption-trained WordPiece/BPE), prompts, text encoders' pooling."""

import json

import pytest
import torch

from clapkit.text import (
    GPT2_EOT_ID,
    TextTokenizer,
    apply_prompt,
    gpt2_bpe,
    train_bytelevel_bpe,
    train_wordpiece,
    wordpiece_from_vocab,
)

CAPTIONS = [
    "a dog barks loudly", "rain falls on a tin roof", "a piano plays a slow melody", "a dog and a cat fight",
    "the cat meows twice", "wind blows hard through trees", "a bell rings twice", "thunder rumbles far away",
    "a woman speaks english", "a man says yes", "footsteps on gravel", "a door slams shut",
] * 3


@pytest.fixture(scope="module")
def gpt2():
    return TextTokenizer(gpt2_bpe(), "gpt2", max_length=16)


def test_gpt2_bpe_known_answers(gpt2):
    tok = gpt2.tokenizer
    assert tok.get_vocab_size() == 50257
    assert tok.encode("Hello world").ids == [15496, 995]
    assert tok.token_to_id("!") == 0  # the id msclap pads with
    assert tok.decode(tok.encode("héllo wörld, 1234!").ids) == "héllo wörld, 1234!"  # byte-level: lossless
    # msclap 2023: text + " <|endoftext|>" -> the space is its own token (220), then 50256 is pooled.
    assert gpt2.encode("this is the sound of dog") == [5661, 318, 262, 2128, 286, 3290, 220, GPT2_EOT_ID]


def test_gpt2_bpe_matches_transformers_tokenizer(gpt2):
    """Parity with transformers' GPT-2 tokenizer built from the same files' contents (as msclap tokenizes)."""
    from transformers import GPT2TokenizerFast

    from clapkit.text import _gpt2_files

    vocab, merges = _gpt2_files()
    reference = GPT2TokenizerFast(vocab=dict(vocab), merges=list(merges))
    for text in ["this is the sound of rain", "Wow!! A dog's   bark...", "naïve café 42 ünïcödé", "", "a\ttab\nnewline"]:
        ours = gpt2.tokenizer.encode(text + " <|endoftext|>").ids
        assert ours == reference(text + " <|endoftext|>")["input_ids"], text


def test_exclamation_mark_does_not_move_the_pooled_token(gpt2):
    batch = gpt2(["wow!", "a dog barks loudly"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids[0].tolist()[:4] == [42773, 0, 220, GPT2_EOT_ID]  # "wow", "!" (= id 0), " ", eot
    from clapkit.models.text_encoders import last_real_index

    ours = last_real_index(mask)
    assert ids[torch.arange(2), ours].tolist() == [GPT2_EOT_ID, GPT2_EOT_ID]
    # msclap's rule (pad with 0, pooled index = count of non-zero ids - 1) lands one token early on "wow!".
    padded_like_msclap = ids.masked_fill(mask == 0, 0)
    msclap_index = torch.ne(padded_like_msclap, 0).sum(-1) - 1
    assert padded_like_msclap[0, msclap_index[0]] == 220 and msclap_index[1] == ours[1]


def test_truncation_keeps_the_end_token_and_padding_is_dynamic(gpt2):
    long_text = " ".join(["word"] * 40)
    full = gpt2.tokenizer.encode(long_text + " <|endoftext|>").ids
    assert len(full) > 16
    cut = gpt2.encode(long_text)
    assert len(cut) == 16 and cut[-2:] == [220, GPT2_EOT_ID] and cut[:14] == full[:14]
    batch = gpt2([long_text, "dog", "rain"])
    assert batch["input_ids"].shape == (3, 16)  # padded to the longest, which was cut to max_length
    assert batch["attention_mask"].sum(1).tolist() == [16, 3, 3]
    short = gpt2(["dog", "rain falls"])
    assert short["input_ids"].shape == (2, 4)  # no padding to max_length
    assert short["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_trained_wordpiece_is_deterministic_and_bert_shaped(tmp_path):
    # tokenizers' own trainer numbers the "##x" tokens in hash order, so two trainings differed (issue #1794).
    first = train_wordpiece(CAPTIONS, vocab_size=160, min_frequency=1)
    for _ in range(4):
        assert train_wordpiece(CAPTIONS, vocab_size=160, min_frequency=1).to_str() == first.to_str()
    tok = TextTokenizer(first, "wordpiece", max_length=6)
    enc = first.encode("A DOG barks")
    assert enc.tokens == ["[CLS]", "a", "dog", "barks", "[SEP]"]  # lower-cased, [CLS] ... [SEP]
    ids = tok.encode("a dog barks loudly at the cat")
    assert len(ids) == 6 and ids[0] == first.token_to_id("[CLS]") and ids[-1] == first.token_to_id("[SEP]")
    assert tok.pad_id == first.token_to_id("[PAD]") == 0 and tok.pooling == "first"
    tok.save(tmp_path)
    loaded = TextTokenizer.load(tmp_path)
    assert loaded.spec() == {"kind": "wordpiece", "max_length": 6}
    assert loaded(CAPTIONS[:5])["input_ids"].tolist() == tok(CAPTIONS[:5])["input_ids"].tolist()


def test_trained_bytelevel_bpe_is_roberta_shaped():
    first = train_bytelevel_bpe(CAPTIONS, vocab_size=320, min_frequency=1)
    assert train_bytelevel_bpe(CAPTIONS, vocab_size=320, min_frequency=1).to_str() == first.to_str()
    assert [first.token_to_id(t) for t in ("<s>", "<pad>", "</s>")] == [0, 1, 2]
    enc = first.encode("a dog barks!")
    assert enc.tokens[0] == "<s>" and enc.tokens[-1] == "</s>" and "[UNK]" not in enc.tokens
    assert first.decode(enc.ids) == " a dog barks!"  # byte-level (prefix space added): nothing is unknown
    tok = TextTokenizer(first, "bpe", max_length=4)
    assert tok.pad_id == 1 and tok.encode("a dog barks loudly")[-1] == 2


def test_wordpiece_from_bert_vocab_file(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "dog", "bark", "##s", "!", ","]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = wordpiece_from_vocab(tmp_path / "vocab.txt")
    assert tok.encode("The DOG barks, cat!").ids == [2, 5, 6, 7, 8, 10, 1, 9, 3]
    (tmp_path / "bad.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.txt"):
        wordpiece_from_vocab(tmp_path / "bad.txt")


def test_from_spec():
    assert TextTokenizer.from_spec({"kind": "gpt2", "max_length": 20}).encode("Hello world")[:2] == [15496, 995]
    with pytest.raises(ValueError, match="trained or given"):
        TextTokenizer.from_spec({"kind": "wordpiece", "max_length": 20})
    with pytest.raises(ValueError, match="kind"):
        TextTokenizer(gpt2_bpe(), "sentencepiece")


def test_prompts():
    assert apply_prompt(["dog_bark", "rain"]) == ["this is the sound of dog bark", "this is the sound of rain"]
    assert apply_prompt(["pouring  water"], "openclip") == ["This is a sound of pouring water."]
    with pytest.raises(ValueError, match="placeholder"):
        apply_prompt(["dog"], "no placeholder")


def test_encoders_pool_at_the_right_token(gpt2):
    from clapkit.models.text_encoders import build_text_encoder

    torch.manual_seed(0)
    enc = build_text_encoder({"name": "gpt2", "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 2}).eval()
    assert enc.transformer.config._attn_implementation == "sdpa"
    texts = ["wow!", "a dog barks loudly on a tin roof"]
    batch = gpt2(texts)
    with torch.no_grad():
        pooled = enc(**batch)
        hidden = enc.hidden_states(**batch)
        alone = enc(**gpt2(texts[:1]))
    eot_positions = (batch["input_ids"] == GPT2_EOT_ID).int().argmax(1)  # first eot = the appended one
    assert torch.equal(pooled, hidden[torch.arange(2), eot_positions])
    torch.testing.assert_close(pooled[0], alone[0], rtol=0, atol=1e-5)  # padding does not leak into the result

    bert = build_text_encoder({"name": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16}).eval()
    ids, mask = torch.tensor([[2, 7, 8, 3]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(bert(ids, mask), bert.hidden_states(ids, mask)[:, 0])
    with pytest.raises(ValueError, match="n_embed"):
        build_text_encoder({"name": "gpt2", "n_embed": 8})
    with pytest.raises(ValueError, match="unknown text encoder"):
        build_text_encoder({"name": "t5"})
    assert json.dumps(enc.transformer.config.to_dict())  # config stays serialisable
