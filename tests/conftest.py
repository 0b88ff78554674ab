"""Tiny random masked and causal LMs with locally trained tokenizers, so tests run offline in seconds."""

from __future__ import annotations

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
)


POSITIVE = ["great", "good", "wonderful", "moving", "gorgeous", "fine", "superb", "lovely", "brilliant", "fun"]
NEGATIVE = ["bad", "terrible", "awful", "boring", "dull", "poor", "weak", "ugly", "messy", "tedious"]
FILLER = [
    "film",
    "movie",
    "story",
    "plot",
    "acting",
    "the",
    "a",
    "this",
    "was",
    "is",
    "and",
    "it",
    "very",
    "really",
    "In",
    "summary",
    ",",
    ".",
    "?",
    "Question",
    "Answer",
    "yes",
    "no",
    "maybe",
    "It",
    "sentiment",
    "review",
]
CORPUS = [" ".join(random.Random(i).choices(POSITIVE + NEGATIVE + FILLER, k=12)) for i in range(400)] + [
    "In summary, it was great.",
    "In summary, it was bad.",
    "a gorgeous, moving film",
    "a dull, tedious film",
]


def sentiment_data(n_per_class: int, seed: int) -> dict[str, list]:
    """A synthetic two-class sentiment set whose classes differ by their adjectives."""
    rng = random.Random(seed)
    texts, labels = [], []
    for label, words in ((0, NEGATIVE), (1, POSITIVE)):
        for _ in range(n_per_class):
            adjectives = rng.sample(words, 3)
            texts.append(
                f"the {rng.choice(['film', 'movie', 'story'])} was {adjectives[0]} , {adjectives[1]} and "
                f"{adjectives[2]}"
            )
            labels.append(label)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return {"sentence": [texts[i] for i in order], "label": [labels[i] for i in order]}


def _byte_bpe() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )
    fast.mask_token = fast.mask_token  # keep a plain AddedToken
    from tokenizers import AddedToken

    fast.add_special_tokens({"mask_token": AddedToken("<mask>", lstrip=True, special=True)})
    return fast


def _sentencepiece() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _wordpiece() -> BertTokenizerFast:
    words = sorted({w.lower() for s in CORPUS for w in s.replace(",", " , ").replace(".", " . ").split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz,.?") + words
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(dict.fromkeys(vocab))})


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return _byte_bpe()


@pytest.fixture(scope="session")
def sp_tokenizer():
    return _sentencepiece()


@pytest.fixture(scope="session")
def wordpiece_tokenizer():
    return _wordpiece()


def tiny_roberta(tokenizer, seed: int = 0) -> RobertaForMaskedLM:
    torch.manual_seed(seed)
    cfg = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=130,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
    )
    return RobertaForMaskedLM(cfg).eval()


def tiny_bert(tokenizer, seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    return BertForMaskedLM(cfg).eval()


def tiny_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(params=["roberta", "bert", "llama"])
def lm(request, bpe_tokenizer, wordpiece_tokenizer):
    """(model, tokenizer, kind) for a tiny masked LM with BPE, one with WordPiece, and a causal LM with BPE."""
    if request.param == "roberta":
        return tiny_roberta(bpe_tokenizer), bpe_tokenizer, "masked"
    if request.param == "bert":
        return tiny_bert(wordpiece_tokenizer), wordpiece_tokenizer, "masked"
    return tiny_llama(bpe_tokenizer), bpe_tokenizer, "causal"


@pytest.fixture(scope="session")
def sentiment_train():
    return sentiment_data(16, seed=1)


@pytest.fixture(scope="session")
def sentiment_test():
    return sentiment_data(25, seed=2)


LABEL_WORDS = {"negative": ["bad"], "positive": ["great"]}
TEMPLATE = "{text_a} In summary, it was {mask}."
