"""predict from several threads on one model gives what sequential calls give (calls are serialised by peft-dect's
lock)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from conftest import LABEL_WORDS, TEMPLATE, sentiment_data, tiny_llama
from peft import get_peft_model

from peft_dect import DecTConfig


def test_concurrent_predict_equals_sequential(bpe_tokenizer):
    model = get_peft_model(tiny_llama(bpe_tokenizer), DecTConfig(template=TEMPLATE, label_words=LABEL_WORDS))
    model.fit(sentiment_data(16, 1), tokenizer=bpe_tokenizer, show_progress=False)
    batches = [sentiment_data(6, seed)["sentence"] for seed in range(8)]
    sequential = [model.predict_proba(b) for b in batches]
    model.base_model.use_cache_dir(None)  # make the threads run the model, not just read the cache
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(model.predict_proba, batches))
    for a, b in zip(sequential, concurrent):
        np.testing.assert_array_equal(a.argmax(-1), b.argmax(-1))
        # Same batches, one call at a time; a worker thread may use another number of intra-op (OpenMP) threads than
        # the main thread, which reorders float sums in the last bits only.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
