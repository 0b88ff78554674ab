"""The in-memory feature cache's size bound: least recently used rows go first, never those being extracted."""

import numpy as np
import pytest
import torch
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama
from peft import get_peft_model

from peft_dect import DecTConfig
from peft_dect.features import FeatureCache, Features


ROW = 4 * (6 + 2)  # float32 hidden (6) + label scores (2)


def rows(n: int, start: int = 0) -> Features:
    values = torch.arange(start, start + n, dtype=torch.float32)[:, None]
    return Features(values.expand(n, 6).clone(), values.expand(n, 2).clone())


def test_least_recently_used_rows_are_dropped_past_the_bound():
    cache = FeatureCache(max_bytes=3 * ROW)
    cache.put(["a", "b", "c"], rows(3))
    assert cache.missing(["a"]) == []  # "a" is used again: "b" is now the oldest
    cache.put(["d"], rows(1, 3))
    assert set(cache._store) == {"a", "c", "d"} and cache.bytes == 3 * ROW
    cache.limit(ROW)
    assert list(cache._store) == ["d"] and cache.bytes == ROW
    cache.limit(None)
    cache.put(["e", "f"], rows(2, 4))
    assert len(cache) == 3


def test_an_extraction_larger_than_the_bound_keeps_its_rows_until_gathered():
    cache = FeatureCache(max_bytes=2 * ROW)
    cache.put(["x"], rows(1))
    keys = ["k0", "k1", "k2", "k3"]
    cache.put(keys[:3], rows(3), keep=keys)
    cache.put(keys[3:], rows(1, 3), keep=keys)
    assert len(cache) == 4 and "x" not in cache  # over the bound while the call runs
    assert torch.equal(cache.gather(keys).hidden[:, 0], torch.arange(4.0))  # none of the call's rows was dropped
    assert list(cache._store) == ["k2", "k3"]  # gathered: back within the bound, the last used kept


@pytest.mark.parametrize("bad", [0, -1, 1.5, "1e6", True])
def test_a_bound_that_is_not_a_positive_integer_is_refused(bad):
    with pytest.raises(ValueError, match="max_bytes must be a positive integer"):
        FeatureCache(max_bytes=bad)


def test_dect_predictions_do_not_depend_on_the_bound(bpe_tokenizer):
    config = DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS)
    model = get_peft_model(tiny_llama(bpe_tokenizer), config)
    model.fit(sentiment_data(8, seed=3), tokenizer=bpe_tokenizer, show_progress=False)
    texts = sentiment_data(15, seed=9)["sentence"]
    expected = model.predict_proba(texts)
    tuner = model.base_model
    row = tuner.backbone().cache.bytes // len(tuner.backbone().cache)
    tuner.use_cache_dir(None, max_bytes=5 * row)
    cache = tuner.backbone().cache
    np.testing.assert_allclose(model.predict_proba(texts), expected, atol=1e-6)
    for start in range(0, 30, 5):  # small calls: the cache stays within its bound
        model.predict(texts[start : start + 5])
        assert cache.bytes <= 5 * row
    with pytest.raises(ValueError, match="max_bytes must be a positive integer"):
        tuner.use_cache_dir(None, max_bytes=0)
