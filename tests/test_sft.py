"""SFT: packing layout, loss against a float64 NumPy recomputation, packed == unpacked and
accumulated == single-batch gradients, learning the addition task, resume, and the launcher."""

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from zero_rl.data.records import RecordError
from zero_rl.data.synthetic import AdditionTask, sft_pairs
from zero_rl.models import ModelConfig, create_model, from_hf
from zero_rl.rewards import extract_answer
from zero_rl.sampler import generate
from zero_rl.sharding import activation_sharding, make_mesh, named_sharding
from zero_rl.summaries import read_scalars
from zero_rl.tokenizer import load_tokenizer
from zero_rl.train.packing import pack_sequences, packed_batches, pad_sequences
from zero_rl.train.sft import loss_and_grads, read_sft_pairs, train_sft

REPO = Path(__file__).resolve().parents[1]
MODEL_DIMS = ("vocab_size", "embed_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim",
              "mlp_dim")  # fmt: skip


def tiny_config() -> ConfigDict:
    spec = importlib.util.spec_from_file_location("sft_tiny", REPO / "configs" / "sft_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tiny_model(config: ConfigDict, seed: int = 0):
    cfg = ModelConfig(**{k: config.model[k] for k in MODEL_DIMS})
    return create_model(cfg, seed)


def random_docs(rng, n, vocab=64, max_prompt=6, max_response=9):
    return [
        (
            rng.integers(4, vocab, rng.integers(1, max_prompt + 1)).tolist(),
            rng.integers(4, vocab, rng.integers(1, max_response + 1)).tolist(),
        )
        for _ in range(n)
    ]


# ---------------------------------------------------------------------------------------------
# Packing

DOCS = [([1], [2, 3, 4]), ([5, 6], [7]), ([8], [9]), ([10], [11, 12])]


def test_pack_layout_hand_made():
    # Best fit: [8, 9] (length 2) joins the row with 2 free slots, not the one with 3.
    batch = pack_sequences(DOCS, seq_len=6, pad_id=0, rows=3)
    np.testing.assert_array_equal(
        batch["tokens_bt"], [[1, 2, 3, 4, 8, 9], [5, 6, 7, 10, 11, 12], [0] * 6]
    )
    np.testing.assert_array_equal(
        batch["positions_bt"], [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2], [-1] * 6]
    )
    np.testing.assert_array_equal(
        batch["segment_ids_bt"], [[1, 1, 1, 1, 2, 2], [1, 1, 1, 2, 2, 2], [0] * 6]
    )
    np.testing.assert_array_equal(
        batch["loss_mask_bt"], [[0, 1, 1, 1, 0, 1], [0, 0, 1, 0, 1, 1], [0] * 6]
    )
    assert batch["tokens_bt"].dtype == np.int32 and batch["loss_mask_bt"].dtype == np.float32


def test_unpacked_layout_hand_made():
    batch = pad_sequences(DOCS[:2], seq_len=5, pad_id=-7)
    np.testing.assert_array_equal(batch["tokens_bt"], [[1, 2, 3, 4, -7], [5, 6, 7, -7, -7]])
    np.testing.assert_array_equal(batch["positions_bt"], [[0, 1, 2, 3, -1], [0, 1, 2, -1, -1]])
    np.testing.assert_array_equal(batch["segment_ids_bt"], [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(batch["loss_mask_bt"], [[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]])


def test_overflow_truncates_or_raises():
    long_doc = [([1, 2], [3, 4, 5, 6])]
    with pytest.raises(ValueError, match=r"document 0 has 6 tokens .* seq_len=4"):
        pack_sequences(long_doc, seq_len=4, pad_id=0)
    batch = pack_sequences(long_doc, seq_len=4, pad_id=0, overflow="truncate")
    np.testing.assert_array_equal(batch["tokens_bt"], [[1, 2, 3, 4]])
    np.testing.assert_array_equal(batch["loss_mask_bt"], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="prompt alone"):
        pack_sequences([([1, 2, 3, 4], [5])], seq_len=4, pad_id=0, overflow="truncate")


@pytest.mark.parametrize(
    "docs, kwargs, message",
    [
        ([([], [1])], {}, "empty prompt"),
        ([([1], [])], {}, "empty response"),
        ([], {}, "no documents"),
        (DOCS, {"rows": 1}, "need 2 rows"),
        (DOCS, {"overflow": "drop"}, "overflow must be"),
    ],
)
def test_pack_rejects_bad_input(docs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pack_sequences(docs, seq_len=6, pad_id=0, **kwargs)


def test_packed_batches_resume_and_cover_every_document():
    docs = random_docs(np.random.default_rng(0), 40)
    kwargs = dict(seq_len=16, pad_id=0, batch_rows=3, seed=5)
    stream = packed_batches(docs, **kwargs)
    first = [next(stream) for _ in range(12)]
    resumed = packed_batches(docs, **kwargs, start_step=7)
    for expected in first[7:]:
        got = next(resumed)
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value)
    # Read the documents back out of the rows: the first epoch holds each exactly once.
    segments = []
    for batch in first:
        for tokens, segment_ids in zip(batch["tokens_bt"], batch["segment_ids_bt"]):
            segments += [tuple(tokens[segment_ids == s]) for s in range(1, segment_ids.max() + 1)]
    assert sorted(segments[: len(docs)]) == sorted(tuple(p + r) for p, r in docs)


# ---------------------------------------------------------------------------------------------
# Loss and gradients


@pytest.fixture(scope="module")
def gradient_results():
    """Loss and grads of 8 documents packed, unpacked, and packed in 2 microbatches, computed on a
    data=2 x fsdp=2 mesh (packed and unpacked batches share a shape: one compilation)."""
    model = tiny_model(tiny_config(), seed=1)
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(1)
    docs = []
    for length in (5, 9, 14, 5, 9, 14, 9, 14):
        ids = rng.integers(4, 64, length).tolist()
        prompt_len = int(rng.integers(1, length))
        docs.append((ids[:prompt_len], ids[prompt_len:]))
    packed = pack_sequences(docs, seq_len=24, pad_id=0, rows=8)
    unpacked = pad_sequences(docs, seq_len=24, pad_id=3)
    # Packed rows hold very different numbers of response tokens and some are empty, so a
    # per-microbatch or per-row normalisation would give a different gradient.
    assert packed["loss_mask_bt"][-1].sum() == 0 and packed["loss_mask_bt"][0].sum() > 0
    mesh = make_mesh({"data": 2, "fsdp": 2}, devices=jax.devices()[:4])
    on_mesh = lambda b: {
        k: jax.device_put(v, named_sharding(("batch", "length"), v.shape, mesh))
        for k, v in b.items()
    }
    results = {}
    with activation_sharding(mesh):
        for name, batch, accum in (("packed", packed, 1), ("unpacked", unpacked, 1),
                                   ("accumulated", packed, 2)):  # fmt: skip
            fn = functools.partial(loss_and_grads, graphdef=graphdef, grad_accum=accum)
            results[name] = jax.jit(fn)(params, on_mesh(batch))
    return model, docs, results


def _numpy_reference_loss(model, docs) -> float:
    """Each document in a row of its own with plain causal attention and no packing, segment ids
    or padding mask (causality alone keeps the trailing filler out), float64 log-softmax."""
    width = max(len(p) + len(r) for p, r in docs)
    tokens = np.array([p + r + [5] * (width - len(p) - len(r)) for p, r in docs])
    logits = np.asarray(jax.jit(lambda t: model(t))(jnp.asarray(tokens)), np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll, count = 0.0, 0
    for row, (prompt, response) in enumerate(docs):
        targets = np.arange(len(prompt), len(prompt) + len(response))
        nll -= logp[row, targets - 1, tokens[row, targets]].sum()
        count += len(response)
    return nll / count


def test_loss_matches_numpy_per_document(gradient_results):
    model, docs, results = gradient_results
    loss, _ = results["packed"]
    np.testing.assert_allclose(float(loss), _numpy_reference_loss(model, docs), rtol=1e-5)


def _assert_same_grads(grads, expected):
    for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(e))))


def test_packed_and_unpacked_give_same_loss_and_grads(gradient_results):
    _, _, results = gradient_results
    np.testing.assert_allclose(results["packed"][0], results["unpacked"][0], rtol=1e-6)
    _assert_same_grads(results["packed"][1], results["unpacked"][1])


def test_grad_accumulation_equals_one_batch(gradient_results):
    _, _, results = gradient_results
    np.testing.assert_allclose(results["accumulated"][0], results["packed"][0], rtol=1e-6)
    _assert_same_grads(results["accumulated"][1], results["packed"][1])


def test_loss_and_grads_rejects_uneven_microbatches(gradient_results):
    model, docs, _ = gradient_results
    graphdef, params = nnx.split(model)
    batch = pack_sequences(docs, seq_len=24, pad_id=0, rows=8)
    with pytest.raises(ValueError, match="8 rows do not split into grad_accum=3"):
        loss_and_grads(params, batch, graphdef=graphdef, grad_accum=3)


# ---------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def addition_run(tmp_path_factory):
    """The tiny config trained on the clean teacher (carry_error_rate=0)."""
    workdir = tmp_path_factory.mktemp("sft_addition")
    config = tiny_config()
    tokenizer = load_tokenizer(config.tokenizer)
    pairs = sft_pairs(AdditionTask().split("train"), carry_error_rate=0.0, seed=0)
    run = lambda directory, seed: train_sft(
        config.sft, model=tiny_model(config, seed), tokenizer=tokenizer, pairs=pairs,
        workdir=str(directory),
    )  # fmt: skip
    return run, run(workdir, seed=0), workdir, config, tokenizer


def test_learns_addition_and_greedy_decodes_held_out_problems(addition_run):
    _, model, workdir, config, tokenizer = addition_run
    scalars = read_scalars(str(workdir / "tb"))
    for tag in ("sft/loss", "sft/learning_rate", "sft/grad_norm", "sft/tokens_per_s"):
        assert tag in scalars, tag
    losses = [v for _, v in scalars["sft/loss"]]
    assert len(losses) == config.sft.steps
    final_loss = float(np.mean(losses[-10:]))
    assert final_loss < 0.1, f"mean loss of the last 10 steps {final_loss:.3f} nats/token"
    # Fixed shapes: the step compiles in the first log interval and never again.
    compiles = [v for _, v in scalars["perf/num_compiles"]]
    assert compiles == [compiles[0]] * len(compiles), compiles

    held_out = AdditionTask().split("eval")[:64]
    prompts = tokenizer.batch_encode([ex.prompt for ex in held_out], add_bos=True)
    out = generate(
        model, prompts, max_new_tokens=32, temperature=0.0,
        stop_token_ids=tokenizer.stop_token_ids, pad_id=tokenizer.pad_id,
    )  # fmt: skip
    answers = [
        extract_answer(tokenizer.decode(tokens[:length]))
        for tokens, length in zip(np.asarray(out.tokens_bn), np.asarray(out.lengths_b))
    ]
    accuracy = np.mean([a == ex.answer for a, ex in zip(answers, held_out)])
    print(f"final loss {final_loss:.4f} nats/token, held-out greedy accuracy {accuracy:.3f}")
    assert accuracy >= 0.8, f"greedy accuracy {accuracy:.2f} on held-out problems: {answers}"


def test_resume_continues_at_the_checkpointed_step(addition_run, tmp_path, capsys):
    run, trained, workdir, config, _ = addition_run
    last, steps = config.sft.checkpoint_every * 2, config.sft.steps
    checkpoints = tmp_path / "sft_checkpoints"
    shutil.copytree(workdir / "sft_checkpoints", checkpoints)
    assert sorted(int(p.name) for p in checkpoints.iterdir()) == [last // 2, last, steps]
    # A run cut short after its second checkpoint. Restarting from a different random init shows
    # that weights, optimiser state and data position all come from the checkpoint.
    shutil.rmtree(checkpoints / str(steps))
    capsys.readouterr()
    resumed = run(tmp_path, seed=123)
    out = capsys.readouterr().out
    assert f"steps {last + 1}..{steps}" in out and f"sft step {last}/" not in out
    logged = [s for s, _ in read_scalars(str(tmp_path / "tb"))["sft/loss"]]
    assert logged == list(range(last + 1, steps + 1))
    for a, b in zip(jax.tree.leaves(nnx.state(trained)), jax.tree.leaves(nnx.state(resumed))):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_train_sft_rejects_bad_config():
    config = tiny_config()
    config.sft.grad_accum = 3
    tokenizer = load_tokenizer(config.tokenizer)
    with pytest.raises(ValueError, match="batch_size=8 is not a multiple of sft.grad_accum=3"):
        train_sft(config.sft, model=tiny_model(config), tokenizer=tokenizer, pairs=[("a", "b")],
                  workdir=None)  # fmt: skip
    config.sft.grad_accum, config.sft.seq_len = 1, 8192
    with pytest.raises(ValueError, match="exceeds the model's max_position=4096"):
        train_sft(config.sft, model=tiny_model(config), tokenizer=tokenizer, pairs=[("a", "b")],
                  workdir=None)  # fmt: skip
    config.sft.seq_len, config.sft.batch_size = 128, 4
    with pytest.raises(ValueError, match="4 rows does not split over the 8 devices"):
        train_sft(config.sft, model=tiny_model(config), tokenizer=tokenizer, pairs=[("a", "b")],
                  workdir=None)  # fmt: skip


def test_read_sft_pairs(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"q": "What is 1 + 2?\n", "a": "1+2=3, \\boxed{3}"}, {"q": "x", "a": "y"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = read_sft_pairs(path, prompt_field="q", response_field="a")
    assert read.pairs == [(r["q"], r["a"]) for r in rows] and read.num_skipped == 0
    assert len(read_sft_pairs(path, prompt_field="q", response_field="a", limit=1).pairs) == 1
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"q": "x"}) + "\n")
    with pytest.raises(RecordError, match=r"data.jsonl:line 2: field 'a' is missing"):
        read_sft_pairs(path, prompt_field="q", response_field="a")
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        read_sft_pairs(path, prompt_field="q", response_field="a", on_error="ignore")


def test_read_sft_pairs_skips_and_counts_bad_records(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"q": "1+1?", "a": "2"}), "{not json", json.dumps([1, 2]),
             json.dumps({"q": "", "a": "3"}), json.dumps({"q": "2+2?", "a": 4}),
             json.dumps({"q": "3+3?", "a": "6"})]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        read = read_sft_pairs(path, prompt_field="q", response_field="a", on_error="skip")
    assert read.pairs == [("1+1?", "2"), ("3+3?", "6")]
    assert read.num_skipped == 4 and "skipped 4 bad records" in caplog.text
    for message, line in zip(read.skipped, (2, 3, 4, 5)):
        assert message.startswith(f"{path}:line {line}: "), message
    assert "malformed JSON" in read.skipped[0] and "not an object" in read.skipped[1]
    assert "field 'q'" in read.skipped[2] and "field 'a'" in read.skipped[3]
    path.write_text(lines[1] + "\n")
    with pytest.raises(RecordError, match=r"no usable records \(1 skipped\)"):
        read_sft_pairs(path, prompt_field="q", response_field="a", on_error="skip")


def test_epochs_reshuffle_and_seeds_differ():
    docs = [([i + 4], [i + 5, i + 6]) for i in range(24)]  # 3 tokens each, all distinct

    def doc_order(seed, batches):
        stream = packed_batches(docs, seq_len=6, pad_id=0, batch_rows=2, seed=seed)
        order = []
        for _ in range(batches):
            batch = next(stream)
            for tokens, segment_ids in zip(batch["tokens_bt"], batch["segment_ids_bt"]):
                order += [int(tokens[segment_ids == s][0]) - 4 for s in (1, 2)]
        return order

    # 2 documents per row, 2 rows per batch: 6 batches per epoch.
    order = doc_order(seed=3, batches=12)
    epoch0, epoch1 = order[:24], order[24:]
    assert sorted(epoch0) == sorted(epoch1) == list(range(24))
    assert epoch0 != epoch1
    # An epoch's order is the permutation of (seed, epoch), so packing kept it.
    assert epoch1 == np.random.default_rng((3, 1)).permutation(24).tolist()
    assert doc_order(seed=4, batches=12) != order


def test_resume_refuses_other_data(addition_run, tmp_path):
    _, _, workdir, config, tokenizer = addition_run
    shutil.copytree(workdir / "sft_checkpoints", tmp_path / "sft_checkpoints")
    pairs = sft_pairs(AdditionTask().split("train"), carry_error_rate=0.0, seed=0)
    other_answer = [(pairs[0][0], pairs[0][1] + " "), *pairs[1:]]
    for sft_cfg_changes, run_pairs, field in (
        ({}, pairs[:-1], "num_docs"),
        ({"seed": 1}, pairs, "seed"),
        ({"seq_len": 96}, pairs, "seq_len"),
        ({}, other_answer, "data_fingerprint"),
    ):
        sft_cfg = config.sft.copy_and_resolve_references()
        sft_cfg.update(sft_cfg_changes)
        with pytest.raises(ValueError, match=rf"trained with {field}=.* but this run has {field}="):
            train_sft(sft_cfg, model=tiny_model(config), tokenizer=tokenizer, pairs=run_pairs,
                      workdir=str(tmp_path))  # fmt: skip


def test_launch_sft_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    command = [
        sys.executable, "launch/sft.py", "--config=configs/sft_tiny.py", f"--workdir={workdir}",
        "--config.sft.steps=2", "--config.sft.log_every=1", "--config.sft.batch_size=8",
        "--config.sft.seq_len=64", "--config.data.limit=32",
        "--config.model.rope_theta=5e5", "--config.model.max_position=8192",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"sft step 2/2 loss \d", result.stdout), result.stdout
    assert "\ntemplate=plain\n" in result.stdout, result.stdout
    assert (workdir / "sft_checkpoints" / "2").is_dir()
    assert (workdir / "tb").is_dir()
    config = tiny_config()
    exported = from_hf(workdir / "hf")
    # The long-context overrides reach the model and its export.
    assert (exported.cfg.rope_theta, exported.cfg.max_position) == (5e5, 8192)
    assert exported.cfg == tiny_model(config).cfg.replace(
        hf_architecture="LlamaForCausalLM", rope_theta=5e5, max_position=8192
    )
    with open(workdir / "hf" / "config.json") as f:
        hf_config = json.load(f)
    assert hf_config["max_position_embeddings"] == 8192
    assert (
        hf_config.get("rope_theta", hf_config.get("rope_parameters", {}).get("rope_theta")) == 5e5
    )
    # The export holds the trained weights, not the initial ones (same seed, 2 Adam steps away).
    initial_embed = np.asarray(tiny_model(config, seed=config.model.init_seed).embed[...])
    assert 0 < np.abs(np.asarray(exported.embed[...]) - initial_embed).max() < 0.1
    tokenizer, reference = load_tokenizer(workdir / "hf"), load_tokenizer(config.tokenizer)
    assert (tokenizer.bos_id, tokenizer.eos_id) == (reference.bos_id, reference.eos_id)
    assert tokenizer.encode("What is 12 + 34?") == reference.encode("What is 12 + 34?")


def test_the_sft_config_has_one_schema():
    """Like RL configs, SFT config files start from one schema: every key has a default there,
    and a key the schema lacks is a typo."""
    from zero_rl.config import check_keys, sft_run_config, validate_sft

    config = tiny_config()
    validate_sft(config)
    schema = sft_run_config()
    assert sorted(config.sft.keys()) == sorted(schema.sft.keys())
    check_keys(config, schema)
    with config.unlocked():
        config.sft.logit_chunk = 128  # a typo of logits_chunk
    with pytest.raises(KeyError, match=r"unknown key 'logit_chunk' in config.sft; valid keys: "):
        validate_sft(config)
    bad = tiny_config()
    bad.sft.overflow = "wrap"
    with pytest.raises(ValueError, match="unknown sft.overflow 'wrap'"):
        validate_sft(bad)


def test_launch_sft_names_a_mistyped_key(tmp_path):
    command = [sys.executable, "launch/sft.py", f"--workdir={tmp_path}", "--config.sft.step=2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "unknown key 'step' in config.sft" in result.stderr and "'steps'" in result.stderr
    assert not os.listdir(tmp_path)
