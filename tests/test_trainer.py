"""The Trainer path: DecT's forward as a sequence classifier, trained by transformers.Trainer."""

import numpy as np
import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, tiny_bert, tiny_llama
from peft import get_peft_model
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from peft_dect import DecTConfig


def full_batch_trainer(model, train, evaluation, tmp_path, epochs=30):
    """A Trainer with full-batch Adam at a constant lr 0.01, as `fit` trains the decoder (accuracy as its metric)."""
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=len(train),
        per_device_eval_batch_size=64,
        num_train_epochs=epochs,
        learning_rate=0.01,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        warmup_steps=0,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    return Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=model.collate,
        compute_metrics=accuracy,
    )


def test_forward_returns_sequence_classifier_output(bpe_tokenizer, sentiment_train):
    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    data = model.prepare_dataset(sentiment_train, tokenizer=bpe_tokenizer)
    assert set(data.column_names) == {"input_ids", "attention_mask", "labels"}
    batch = model.collate([data[i] for i in range(4)])
    out = model(**batch)
    assert isinstance(out, SequenceClassifierOutput)
    assert out.logits.shape == (4, 2) and out.loss is not None and out.loss.ndim == 0


@pytest.mark.parametrize("maker", [tiny_llama, tiny_bert], ids=["causal", "masked"])
def test_trainer_matches_fit(maker, bpe_tokenizer, wordpiece_tokenizer, sentiment_train, sentiment_test, tmp_path):
    tok = bpe_tokenizer if maker is tiny_llama else wordpiece_tokenizer
    cfg = dict(template=TEMPLATE, label_words=LABEL_WORDS, mode="faithful")
    fast = get_peft_model(maker(tok), DecTConfig(**cfg))
    fast.fit(sentiment_train, tokenizer=tok, show_progress=False)
    fast_acc = fast.evaluate(sentiment_test)["accuracy"]

    slow = get_peft_model(maker(tok), DecTConfig(**cfg))
    train = slow.prepare_dataset(sentiment_train, tokenizer=tok)
    test = slow.prepare_dataset(sentiment_test)
    trainer = full_batch_trainer(slow, train, test, tmp_path)
    trainer.train()
    trainer_acc = trainer.evaluate()["eval_accuracy"]
    # Same data, full batch, Adam(lr=0.01) for 30 epochs: the two paths agree up to float summation order.
    assert abs(trainer_acc - fast_acc) <= 0.02
    assert abs(slow.evaluate(sentiment_test)["accuracy"] - fast_acc) <= 0.02
    layer_fast, layer_slow = fast.base_model.dect_layer, slow.base_model.dect_layer
    torch.testing.assert_close(
        layer_slow.dect_radii["default"], layer_fast.dect_radii["default"], atol=1e-3, rtol=1e-3
    )
    torch.testing.assert_close(layer_slow.dect_W["default"], layer_fast.dect_W["default"], atol=1e-3, rtol=1e-3)


def test_trainer_leaves_the_base_model_frozen(bpe_tokenizer, sentiment_train, tmp_path):
    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "dect_" not in n}
    train = model.prepare_dataset(sentiment_train, tokenizer=bpe_tokenizer)
    full_batch_trainer(model, train, None, tmp_path, epochs=2).train()
    for n, p in model.named_parameters():
        if "dect_" not in n:
            assert torch.equal(p, before[n]), n
