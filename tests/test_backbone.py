"""Feature extraction: prediction positions, truncation, one pass per input, caching."""

import logging

import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, tiny_llama, tiny_roberta
from transformers import BertModel, LlamaConfig, LlamaModel

from peft_dect.backbone import Backbone, lm_kind, split_head
from peft_dect.features import FeatureCache
from peft_dect.prompting import Template, Verbalizer


def backbone(model, tok, template=TEMPLATE, **kwargs):
    t = Template(template)
    v = Verbalizer.from_words(LABEL_WORDS, tok, space_before=t.space_before_mask)
    return Backbone(model, tok, t, v, show_progress=False, **kwargs)


def test_split_head_matches_the_full_forward(lm):
    model, tok, _ = lm
    assert split_head(model) is not None
    bb = backbone(model, tok)
    ids = bb.tokenize(["a good film", "the plot was dull and very messy"])
    batch = bb.collate(ids)
    fast = bb.forward(**batch)
    out = model(**batch, output_hidden_states=True)
    pos = bb.positions(batch["input_ids"], batch["attention_mask"])
    rows = torch.arange(2)
    torch.testing.assert_close(fast.hidden, out.hidden_states[-1][rows, pos])
    logp = torch.log_softmax(out.logits[rows, pos], -1)
    word_ids = [ids[0] for ids in bb.verbalizer.token_ids]
    torch.testing.assert_close(fast.label_logits, logp[:, word_ids])


def test_causal_position_is_last_real_token_with_left_or_right_padding(bpe_tokenizer):
    bb = backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer)
    ids = bb.tokenize(["a good film", "the plot was dull and very messy"])
    right = bb.collate(ids)
    assert bb.positions(**right).tolist() == [len(ids[0]) - 1, len(ids[1]) - 1]
    width = right["input_ids"].shape[1]
    left_mask = torch.stack([right["attention_mask"][i].roll(width - len(ids[i])) for i in range(2)])
    left_ids = torch.stack([right["input_ids"][i].roll(width - len(ids[i])) for i in range(2)])
    assert bb.positions(left_ids, left_mask).tolist() == [width - 1, width - 1]


def test_features_do_not_depend_on_batching(lm):
    model, tok, _ = lm
    texts = ["a good film", "the plot was dull and very messy", "fun", "a lovely , moving and brilliant story"]
    one = backbone(model, tok, batch_size=1).extract(texts)
    many = backbone(model, tok, batch_size=3).extract(texts)
    torch.testing.assert_close(one.hidden, many.hidden, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(one.label_logits, many.label_logits, atol=1e-5, rtol=1e-4)


def test_each_text_runs_once_and_features_are_autograd_safe(lm):
    model, tok, _ = lm
    bb = backbone(model, tok)
    feats = bb.extract(["a good film", "a bad film", "a good film"])
    assert bb.passes == 2
    bb.extract(["a bad film", "a good film"])
    assert bb.passes == 2
    w = torch.ones(feats.hidden.shape[1], requires_grad=True)
    (feats.hidden @ w).sum().backward()  # inference-mode tensors would raise here
    assert w.grad is not None


def test_truncation_cuts_the_text_and_keeps_the_mask(lm, caplog):
    model, tok, kind = lm
    bb = backbone(model, tok, max_length=24)
    long_text = " ".join(["the film was good and the plot was fun"] * 30)
    with caplog.at_level(logging.WARNING):
        ids = bb.tokenize([long_text, "short"])
    assert len(ids[0]) <= 24 and bb.truncated == 1
    assert "Truncated the text of 1 input" in caplog.text
    suffix_ids = tok("short In summary, it was" if kind == "causal" else "x")["input_ids"]
    if kind == "masked":
        assert ids[0].count(tok.mask_token_id) == 1
    else:
        assert ids[0][-3:] == suffix_ids[-3:]  # the template's end survives
    feats = bb.extract([long_text])
    assert torch.isfinite(feats.hidden).all()


def test_template_longer_than_max_length_is_an_error(bpe_tokenizer):
    bb = backbone(tiny_roberta(bpe_tokenizer), bpe_tokenizer, max_length=6)
    with pytest.raises(ValueError, match="template .* alone needs more than max_length"):
        bb.tokenize(["a good film"])


def test_disk_cache_round_trip(lm, tmp_path):
    model, tok, _ = lm
    first = backbone(model, tok, cache=FeatureCache(tmp_path))
    feats = first.extract(["a good film", "a bad film"])
    second = backbone(model, tok, cache=FeatureCache(tmp_path))
    again = second.extract(["a bad film", "a good film"])
    assert second.passes == 0
    torch.testing.assert_close(again.hidden, feats.hidden.flip(0))


def test_cache_keys_depend_on_template_and_model(bpe_tokenizer):
    model = tiny_llama(bpe_tokenizer)
    a = backbone(model, bpe_tokenizer)
    b = backbone(model, bpe_tokenizer, template="{text_a} It was {mask}.")
    c = backbone(tiny_llama(bpe_tokenizer, seed=1), bpe_tokenizer)
    assert len({a.keys(["x"])[0], b.keys(["x"])[0], c.keys(["x"])[0]}) == 3


def test_corrupt_cache_shard_is_ignored_with_a_warning(tmp_path, caplog):
    (tmp_path / "features-bad-1.safetensors").write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING):
        cache = FeatureCache(tmp_path)
    assert len(cache) == 0 and "Ignoring unreadable feature cache shard" in caplog.text


def test_model_without_lm_head_is_a_type_error(wordpiece_tokenizer):
    from transformers import BertConfig

    with pytest.raises(TypeError, match="AutoModelForMaskedLM"):
        lm_kind(
            BertModel(
                BertConfig(
                    vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
                )
            )
        )
    with pytest.raises(TypeError, match="AutoModelForCausalLM"):
        lm_kind(
            LlamaModel(
                LlamaConfig(
                    vocab_size=50,
                    hidden_size=8,
                    intermediate_size=8,
                    num_hidden_layers=1,
                    num_attention_heads=1,
                    num_key_value_heads=1,
                )
            )
        )


def test_masked_lm_text_containing_the_mask_token_is_an_error(bpe_tokenizer):
    bb = backbone(tiny_roberta(bpe_tokenizer), bpe_tokenizer)
    with pytest.raises(ValueError, match="2 mask tokens"):
        bb.tokenize(["a <mask> film"])


def test_pair_keys_do_not_collide(bpe_tokenizer):
    bb = backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer, template="{text_a} | {text_b} It was {mask}")
    assert bb.keys(["x|y"], ["z"]) != bb.keys(["x"], ["y|z"])


def test_cache_keys_depend_on_the_tokenizer(bpe_tokenizer, sp_tokenizer):
    model = tiny_llama(bpe_tokenizer)
    assert backbone(model, bpe_tokenizer).keys(["x"]) != backbone(model, sp_tokenizer).keys(["x"])


# ---------------------------------------------------------------- the cache never serves stale or foreign features
TEXTS = ["a good film", "a bad film"]


def test_a_lora_merged_copy_does_not_reuse_its_base_models_cached_features(bpe_tokenizer, tmp_path):
    import copy

    from peft import LoraConfig, get_peft_model

    base = tiny_llama(bpe_tokenizer)
    backbone(base, bpe_tokenizer, cache=FeatureCache(tmp_path)).extract(TEXTS)
    lora = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    merged = lora.merge_and_unload()  # same class, name and embeddings as `base`, other attention weights
    bb = backbone(merged, bpe_tokenizer, cache=FeatureCache(tmp_path))
    bb.extract(TEXTS)
    assert bb.passes == len(TEXTS)


def test_weights_updated_in_place_get_new_features(lm):
    model, tok, _ = lm
    bb = backbone(model, tok)
    before = bb.extract(TEXTS)
    last = [p for p in model.parameters() if p.dim() == 2][-2]  # a matrix of the body, not the embeddings
    with torch.no_grad():
        last.add_(0.05)
    after = bb.extract(TEXTS)
    assert bb.passes == 2 * len(TEXTS)
    assert not torch.equal(before.hidden, after.hidden)
    bb.extract(TEXTS)
    assert bb.passes == 2 * len(TEXTS)  # unchanged weights: served from the cache


def test_fingerprint_ignores_nothing_but_pass_through_tuner_tensors(bpe_tokenizer):
    from peft_dect.introspect import model_fingerprint

    model = tiny_llama(bpe_tokenizer)
    key = model_fingerprint(model)
    assert model_fingerprint(model) == key
    with torch.no_grad():
        model.model.norm.weight[3] += 1e-3  # one element of a small tensor: always caught
    assert model_fingerprint(model) != key
    key = model_fingerprint(model)
    model.register_buffer("extra", torch.zeros(3))
    assert model_fingerprint(model) != key


def test_two_dect_adapters_with_one_prompt_share_their_features(bpe_tokenizer, tmp_path):
    """DecT's layer passes the LM head through: the adapters' names and tensors do not enter the feature keys."""
    from peft import get_peft_model

    from peft_dect import DecTConfig

    config = dict(template="{text_a} It was {mask}.", label_words={"negative": ["bad"], "positive": ["great"]})
    named = {name: tiny_llama(bpe_tokenizer) for name in ("default", "other")}
    models = {
        name: get_peft_model(m, DecTConfig(**config), adapter_name=name) for name, m in named.items()
    }  # fmt: skip
    keys = {name: m.base_model.backbone(bpe_tokenizer).key_prefix for name, m in models.items()}
    assert keys["default"] == keys["other"]
    peft_model = models["default"]
    peft_model.base_model.use_cache_dir(tmp_path)
    peft_model.add_adapter("second", DecTConfig(**config))
    peft_model.base_model.backbone(bpe_tokenizer).extract(TEXTS)
    peft_model.set_adapter("second")
    second = peft_model.base_model.backbone(bpe_tokenizer)
    second.extract(TEXTS)
    assert second.passes == 0  # the first adapter's features serve the second


def _rewrite_shard(path, change):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as shard:
        meta = shard.metadata()
        tensors = {name: shard.get_tensor(name) for name in ("hidden", "label_logits")}
    change(tensors)
    save_file(tensors, str(path), metadata=meta)


def test_nan_rows_of_a_cached_shard_are_dropped_and_recomputed(bpe_tokenizer, tmp_path, caplog):
    model = tiny_llama(bpe_tokenizer)
    backbone(model, bpe_tokenizer, cache=FeatureCache(tmp_path)).extract(TEXTS)
    (shard,) = tmp_path.glob("features-*.safetensors")
    _rewrite_shard(shard, lambda t: t["hidden"][0].fill_(float("nan")))
    with caplog.at_level(logging.WARNING):
        bb = backbone(model, bpe_tokenizer, cache=FeatureCache(tmp_path))
    assert "NaN or infinite" in caplog.text
    feats = bb.extract(TEXTS)
    assert bb.passes == 1 and torch.isfinite(feats.hidden).all()


def test_gather_refuses_non_finite_features():
    from peft_dect.features import Features

    cache = FeatureCache()
    cache.put(["k"], Features(torch.tensor([[float("nan"), 1.0]]), torch.zeros(1, 2)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        cache.gather(["k"])


def test_a_cached_row_of_another_width_is_recomputed_with_a_warning(bpe_tokenizer, tmp_path, caplog):
    model = tiny_llama(bpe_tokenizer)
    backbone(model, bpe_tokenizer, cache=FeatureCache(tmp_path)).extract(TEXTS)
    (shard,) = tmp_path.glob("features-*.safetensors")
    _rewrite_shard(shard, lambda t: t.update(hidden=torch.zeros(len(TEXTS), 3)))
    bb = backbone(model, bpe_tokenizer, cache=FeatureCache(tmp_path))
    with caplog.at_level(logging.WARNING):
        feats = bb.extract(TEXTS)
    assert "of another width" in caplog.text and bb.passes == len(TEXTS)
    assert feats.hidden.shape[1] != 3


def test_processes_sharing_a_cache_folder_keep_each_others_shards(tmp_path):
    from peft_dect.features import Features

    first, second = FeatureCache(tmp_path), FeatureCache(tmp_path)  # two processes, opened at once
    first.put(["k1", "k2"], Features(torch.ones(2, 4), torch.ones(2, 2)))
    second.put(["k1", "k3"], Features(torch.ones(2, 4), torch.ones(2, 2)))
    reopened = FeatureCache(tmp_path)
    assert all(key in reopened for key in ("k1", "k2", "k3"))


def test_many_small_shards_are_compacted_when_the_cache_opens(tmp_path):
    from peft_dect.features import COMPACT_ABOVE, Features

    cache = FeatureCache(tmp_path)
    for i in range(COMPACT_ABOVE + 8):  # one shard per predict call
        cache.put([f"k{i}"], Features(torch.full((1, 4), float(i)), torch.zeros(1, 2)))
    assert len(list(tmp_path.glob("features-*.safetensors"))) == COMPACT_ABOVE + 8
    FeatureCache(tmp_path)
    assert len(list(tmp_path.glob("features-*.safetensors"))) == 1
    again = FeatureCache(tmp_path)
    assert len(again) == COMPACT_ABOVE + 8
    assert float(again.gather([f"k{COMPACT_ABOVE}"]).hidden[0, 0]) == COMPACT_ABOVE


def test_a_cache_folder_that_cannot_be_created_is_a_warning(bpe_tokenizer, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        cache = FeatureCache(blocker / "cache")
    assert "cannot be written" in caplog.text and not cache.writable
    bb = backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer, cache=cache)
    bb.extract(TEXTS)
    bb.extract(TEXTS)
    assert bb.passes == len(TEXTS)  # kept in memory


def test_a_full_disk_is_a_warning_and_the_features_stay_in_memory(bpe_tokenizer, tmp_path, caplog, monkeypatch):
    import peft_dect.features as features

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(features, "save_file", full)
    bb = backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer, cache=FeatureCache(tmp_path))
    with caplog.at_level(logging.WARNING):
        bb.extract(TEXTS)
    assert "No space left on device" in caplog.text
    assert not list(tmp_path.iterdir())  # no partial shard left behind
    bb.extract(TEXTS)
    assert bb.passes == len(TEXTS)


@pytest.mark.parametrize("size", [0, -1])
def test_batch_size_must_be_positive(bpe_tokenizer, size):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer, batch_size=size)
    bb = backbone(tiny_llama(bpe_tokenizer), bpe_tokenizer)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got"):
        bb.batch_size = size


def test_a_soft_prompt_trained_further_gets_new_features(bpe_tokenizer):
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(tiny_llama(bpe_tokenizer), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    bb = backbone(model, bpe_tokenizer)
    bb.extract(TEXTS)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight[0, 0] += 0.01  # one step of prompt tuning, in place
    bb.extract(TEXTS)
    assert bb.passes == 2 * len(TEXTS)


OTHER_WORDS = {"negative": ["awful", "dull"], "positive": ["fun"]}


def words_backbone(model, tok, words, cache, **kwargs):
    t = Template(TEMPLATE)
    v = Verbalizer.from_words(words, tok, space_before=t.space_before_mask, **kwargs)
    return Backbone(model, tok, t, v, show_progress=False, cache=cache)


def test_other_label_words_on_seen_texts_run_no_model_pass(lm, tmp_path):
    """The hidden state is cached without the label words; another verbalizer's scores come from the LM head alone,
    equal (to float rounding) to those of a pass, from memory and from a cache folder."""
    model, tok, _ = lm
    cache = FeatureCache(tmp_path)
    first = words_backbone(model, tok, LABEL_WORDS, cache)
    first.extract(TEXTS)
    assert first.passes == len(TEXTS)
    for fresh in (cache, FeatureCache(tmp_path)):
        other = words_backbone(model, tok, OTHER_WORDS, fresh)
        feats = other.extract(TEXTS)
        assert other.passes == 0
        reference = words_backbone(model, tok, OTHER_WORDS, FeatureCache()).extract(TEXTS)
        torch.testing.assert_close(feats.hidden, reference.hidden)
        torch.testing.assert_close(feats.label_logits, reference.label_logits, atol=1e-5, rtol=1e-4)


def test_label_words_continued_through_the_cache_still_run_a_pass(bpe_tokenizer):
    """A causal LM's words of several tokens are scored on the prompt's key/value cache: no shortcut there."""
    model = tiny_llama(bpe_tokenizer)
    cache = FeatureCache()
    words_backbone(model, bpe_tokenizer, LABEL_WORDS, cache).extract(TEXTS)
    long_words = {"negative": ["not good at all"], "positive": ["very good"]}
    other = words_backbone(model, bpe_tokenizer, long_words, cache)
    assert other.continues and not other.scores_from_hidden
    other.extract(TEXTS)
    assert other.passes == len(TEXTS)
    with pytest.raises(ValueError, match="need a model pass"):
        other.label_scores_of(torch.zeros(1, 8))


def test_a_bfloat16_model_gives_float32_features_close_to_float32(bpe_tokenizer):
    """bfloat16 keeps 8 bits of mantissa: hidden states within 2 % of their scale, label-word scores within 0.01."""
    model = tiny_llama(bpe_tokenizer)
    reference = backbone(model, bpe_tokenizer).extract(TEXTS)
    ours = backbone(tiny_llama(bpe_tokenizer).to(torch.bfloat16), bpe_tokenizer).extract(TEXTS)
    assert ours.hidden.dtype == torch.float32 and ours.label_logits.dtype == torch.float32
    scale = reference.hidden.abs().max()
    torch.testing.assert_close(ours.hidden, reference.hidden, atol=0.02 * float(scale), rtol=0)
    torch.testing.assert_close(ours.label_logits, reference.label_logits, atol=1e-2, rtol=0)


def test_unsupported_dtypes_name_the_supported_ones():
    from peft_dect.embedded import resolve_dtype

    assert resolve_dtype(None) == torch.float32 and resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_dtype(torch.float16, device="cuda") == torch.float16
    for bad in ("float16", torch.float16, "int4"):
        with pytest.raises(ValueError, match=r"choose one of \['bfloat16', 'float32'\]"):
            resolve_dtype(bad)


INSTRUCTION = "Read the review below and say whether the film was good or bad , then answer in one word . "


def test_a_prefix_every_prompt_shares_runs_once_with_the_same_features(bpe_tokenizer):
    """A causal LM's common prompt prefix (an instruction, fixed demonstrations) runs once per batch; its key/value
    cache serves every row; features equal the full passes' to float rounding."""
    model = tiny_llama(bpe_tokenizer)
    texts = ["a good film", "the plot was dull and very messy", "fun", "a lovely , moving and brilliant story"]
    shared = backbone(model, bpe_tokenizer, INSTRUCTION + TEMPLATE, batch_size=3)
    rows = shared.tokenize(texts)
    assert shared.shared_prefix(rows) >= 16 and shared.shared_prefix(rows[:1]) == 0
    calls = []
    hook = model.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    ours = shared.extract(texts)
    hook.remove()
    assert len(calls) == 3  # the prefix once, then two batches of suffixes only
    longest, common = max(len(r) for r in rows), shared.shared_prefix(rows)
    assert calls[0][0] == 1 and all(c[1] <= longest - common for c in calls[1:])
    full = backbone(model, bpe_tokenizer, INSTRUCTION + TEMPLATE, batch_size=3)
    full.share_prefixes = False
    reference = full.extract(texts)
    torch.testing.assert_close(ours.hidden, reference.hidden, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.label_logits, reference.label_logits, atol=1e-5, rtol=1e-4)
