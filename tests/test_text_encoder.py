"""FrozenTextEncoder: the packaged MiniLM (offline) and a tiny local decoder-only LLM without a pad token."""
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

from t2i.text.encoder import FrozenTextEncoder, packaged_minilm_path

SHORT = "a small red circle"
LONG = "two blue squares to the left of a big yellow triangle, and a small green circle above them"


@pytest.fixture(scope="module")
def minilm():
    return FrozenTextEncoder(max_length=32, batch_size=2)


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A random 1-layer Llama (llm-jp-3's architecture) whose tokenizer has EOS but no pad token."""
    path = tmp_path_factory.mktemp("tiny_llm")
    words = ["<unk>", "</s>", "a", "small", "red", "circle", "two", "blue", "squares", "big"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>").save_pretrained(path)
    torch.manual_seed(0)
    LlamaModel(LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=4, eos_token_id=1)).save_pretrained(path)
    return path


def test_packaged_minilm_is_the_default(minilm):
    assert (packaged_minilm_path() / "config.json").is_file()
    assert minilm.dim == 384
    out = minilm.encode([SHORT, LONG, ""])
    assert out.shape == (3, 384) and out.dtype == torch.float32
    assert minilm.encode([]).shape == (0, 384)


def test_padding_does_not_change_a_caption_features(minilm):
    alone = minilm.encode([SHORT])[0]  # no padding
    padded = minilm.encode([SHORT, LONG])[0]  # padded to LONG's length
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_masked_mean_of_the_last_hidden_layer(minilm):
    tokens = minilm.tokenizer([SHORT], return_tensors="pt")
    with torch.no_grad():
        hidden = minilm.model(**tokens).last_hidden_state[0]
    torch.testing.assert_close(minilm.encode([SHORT])[0], hidden.mean(0), atol=1e-5, rtol=1e-5)


def test_frozen(minilm):
    assert not minilm.model.training
    assert not any(p.requires_grad for p in minilm.model.parameters())
    out = minilm.encode([SHORT])
    assert not out.requires_grad and out.grad_fn is None


def test_different_texts_differ_and_equal_texts_agree(minilm):
    a, b, a2 = minilm.encode([SHORT, "two blue squares", SHORT])  # batch_size 2: a2 is in another batch
    torch.testing.assert_close(a, a2, atol=1e-5, rtol=1e-5)
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) < 0.95


def test_truncation_at_max_length():
    enc = FrozenTextEncoder(max_length=8)
    a, b = enc.encode([LONG, LONG.replace("green circle above", "red square below")])
    torch.testing.assert_close(a, b)  # the texts differ only after token 8


def test_bad_inputs(minilm, tmp_path):
    with pytest.raises(TypeError, match="list of strings"):
        minilm.encode(SHORT)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FrozenTextEncoder(tmp_path / "missing")


def test_decoder_only_llm_without_pad_token(tiny_llm):
    enc = FrozenTextEncoder(tiny_llm, max_length=16)
    assert enc.tokenizer.pad_token == "</s>" and enc.dim == 32
    alone = enc.encode(["a small red circle"])[0]
    padded = enc.encode(["a small red circle", "two big blue squares a small red circle"])[0]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)  # right padding + causal attention
    assert not any(p.requires_grad for p in enc.model.parameters())


def test_a_batch_of_empty_captions_without_bos_pools_to_zeros(tiny_llm):
    """CFG's empty caption alone is zero tokens for a tokenizer that adds no BOS: zeros, not a model call on an
    empty sequence (a reshape error inside the LLM)."""
    encoder = FrozenTextEncoder(tiny_llm, max_length=16)
    assert torch.equal(encoder.encode(["", ""]), torch.zeros(2, 32))
    assert torch.equal(encoder.encode(["", "a small red circle"])[0], torch.zeros(32))
