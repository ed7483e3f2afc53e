"""HF checkpoint import/export, checked against `transformers` (CPU torch, float32, eager)."""

import json
import shutil
import tracemalloc
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from zero_rl.models import (
    DecodeCache,
    ModelConfig,
    apply,
    config_from_hf,
    from_hf,
    hf_config,
    param_shardings,
    positions_from_mask,
    to_hf,
)
from zero_rl.models import hf as hf_io
from zero_rl.sharding import make_mesh

VOCAB, BATCH, TIME, LEFT_PAD = 256, 2, 12, 3
_TINY = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    attn_implementation="eager",
)
# Each case stresses what its family adds: llama3 RoPE scaling (with a band boundary inside
# head_dim 16) and a sharded index; a sliding window shorter than the sequence and an explicit
# head_dim != hidden/heads; q/k/v biases with tied embeddings.
CASES = {
    "llama": (
        transformers.LlamaConfig,
        dict(
            rope_theta=500_000.0,
            rms_norm_eps=1e-5,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        "60KB",
    ),
    "mistral": (transformers.MistralConfig, dict(sliding_window=4, head_dim=32), None),
    "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=True, rope_theta=1e6), None),
}


def _hf_model(name: str):
    config_cls, extra, _ = CASES[name]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_cls(**_TINY, **extra)).eval()
    # HF initialises norms to 1 and biases to 0; random values make a swapped or dropped norm
    # or bias visible in the logits.
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in param_name else 0.0, 0.1 if "norm" in param_name else 0.2)
    return model


def _inputs():
    rng = np.random.default_rng(0)
    tokens_bt = rng.integers(0, VOCAB, (BATCH, TIME)).astype(np.int32)
    valid_bt = np.ones((BATCH, TIME), bool)
    valid_bt[1, :LEFT_PAD] = False
    return tokens_bt, valid_bt


def _hf_logits(model, tokens_bt, valid_bt) -> np.ndarray:
    position_ids = np.maximum(np.cumsum(valid_bt, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens_bt, dtype=torch.long),
            attention_mask=torch.tensor(valid_bt, dtype=torch.long),
            position_ids=torch.tensor(position_ids, dtype=torch.long),
        )
    return out.logits.numpy()


def _assert_logits_match(ours_btv, ref_btv, valid_bt):
    ours, ref = np.asarray(ours_btv)[valid_bt], ref_btv[valid_bt]
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * scale)


@jax.jit
def _forward(graphdef, params, tokens_bt, valid_bt):
    return apply(graphdef, params, tokens_bt, positions_from_mask(valid_bt))


def _our_logits(model, tokens_bt, valid_bt):
    graphdef, params = nnx.split(model)
    return _forward(graphdef, params, jnp.asarray(tokens_bt), jnp.asarray(valid_bt))


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(name, HF model, its save_pretrained directory, HF logits on the padded batch)."""
    name = request.param
    model = _hf_model(name)
    path = tmp_path_factory.mktemp(name)
    shard = CASES[name][2]
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    tokens_bt, valid_bt = _inputs()
    return name, model, path, _hf_logits(model, tokens_bt, valid_bt)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_single")
    _hf_model("llama").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_model(llama_dir):
    return from_hf(llama_dir)


def test_logits_match_hf_on_left_padded_batch(case):
    name, _, path, ref = case
    if name == "llama":
        assert (path / "model.safetensors.index.json").is_file()
    model = from_hf(path)
    tokens_bt, valid_bt = _inputs()
    _assert_logits_match(_our_logits(model, tokens_bt, valid_bt), ref, valid_bt)


def test_prefill_then_decode_steps_match_hf(case):
    """The sampler's path: the first tokens prefilled, the rest one at a time over the
    `DecodeCache` (prompt chunk, then a response chunk written a slot per step)."""
    _, _, path, ref = case
    model = from_hf(path)
    graphdef, params = nnx.split(model)
    tokens_bt, valid_bt = _inputs()
    positions_bt = positions_from_mask(jnp.asarray(valid_bt))
    prefill = 5

    @jax.jit
    def first(params, tokens, positions):
        m = nnx.merge(graphdef, params)
        hidden, k_lbtkh, v_lbtkh = m.prefill(tokens, positions)
        to_slots = lambda x: x.transpose(0, 1, 3, 2, 4)  # [layers, batch, kv, slots, hd]
        empty = jnp.zeros((*to_slots(k_lbtkh).shape[:3], TIME - prefill, k_lbtkh.shape[-1]))
        cache = DecodeCache(
            ((to_slots(k_lbtkh), empty),), ((to_slots(v_lbtkh), empty),),
            (positions, jnp.full((BATCH, TIME - prefill), -1, jnp.int32)),
        )  # fmt: skip
        return m.logits(hidden), cache

    @jax.jit
    def step(params, tokens_b, positions_b, cache, index):
        m = nnx.merge(graphdef, params)
        return m.decode_step(m.decode_groups(False), tokens_b, positions_b, cache,
                             read_chunks=2, write_chunk=1, write_index=index)  # fmt: skip

    logits, cache = first(params, tokens_bt[:, :prefill], positions_bt[:, :prefill])
    pieces = [logits]
    for i in range(prefill, TIME):
        logits_bv, cache = step(params, tokens_bt[:, i], positions_bt[:, i], cache, i - prefill)
        pieces.append(logits_bv[:, None])
    _assert_logits_match(jnp.concatenate(pieces, axis=1), ref, valid_bt)


def test_mesh_import_shards_params_matches_and_exports(case, tmp_path):
    _, _, path, ref = case
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    model = from_hf(path, mesh=mesh)
    expected = dict(nnx.to_flat_state(param_shardings(model.cfg, mesh)))
    for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = var.get_value()
        assert value.sharding.is_equivalent_to(expected[p], value.ndim), p
    assert not model.embed.get_value().sharding.is_fully_replicated
    tokens_bt, valid_bt = _inputs()
    _assert_logits_match(_our_logits(model, tokens_bt, valid_bt), ref, valid_bt)

    to_hf(model, tmp_path / "from_mesh", dtype="float32")
    unsharded = dict(nnx.to_flat_state(nnx.state(from_hf(path), nnx.Param)))
    for p, var in nnx.to_flat_state(nnx.state(from_hf(tmp_path / "from_mesh"), nnx.Param)):
        np.testing.assert_array_equal(var.get_value(), unsharded[p].get_value(), err_msg=str(p))


def test_export_round_trip_through_transformers(case, tmp_path):
    name, hf_model, path, ref = case
    out = tmp_path / "export"
    to_hf(from_hf(path), out, dtype="float32", max_shard_size="50KB" if name == "qwen2" else "5GB")
    assert (out / "model.safetensors.index.json").is_file() == (name == "qwen2")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    assert type(reloaded) is type(hf_model)
    want, got = hf_model.state_dict(), reloaded.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    tokens_bt, valid_bt = _inputs()
    _assert_logits_match(_hf_logits(reloaded.eval(), tokens_bt, valid_bt), ref, valid_bt)


def test_bfloat16_export_and_import(llama_dir, tmp_path):
    model = from_hf(llama_dir)
    to_hf(model, tmp_path / "bf16", extra_config={"bos_token_id": 1, "eos_token_id": 2})
    with safe_open(tmp_path / "bf16" / "model.safetensors", framework="numpy") as f:
        names = f.keys()
        assert {f.get_slice(k).get_dtype() for k in names} == {"BF16"}
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert (config["torch_dtype"], config["eos_token_id"]) == ("bfloat16", 2)
    generation = json.loads((tmp_path / "bf16" / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)

    reloaded = from_hf(tmp_path / "bf16", param_dtype="bfloat16")
    assert reloaded.embed.get_value().dtype == jnp.bfloat16
    original = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for p, var in nnx.to_flat_state(nnx.state(reloaded, nnx.Param)):
        want = np.asarray(original[p].get_value()).astype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(np.asarray(var.get_value()), want, err_msg=str(p))


def test_config_overrides_and_dtypes(llama_dir):
    model = from_hf(llama_dir, dtype="bfloat16", remat="full")
    assert (model.cfg.dtype, model.cfg.param_dtype, model.cfg.remat) == (
        "bfloat16",
        "float32",
        "full",
    )
    assert model.embed.get_value().dtype == jnp.float32


def test_value_head_starts_at_zero_and_is_not_exported(llama_dir, tmp_path):
    """PPO's critic head is not part of an HF causal LM: import creates it at zero, export leaves
    it out, and the LM itself is unchanged."""
    plain = from_hf(llama_dir)
    with_head = from_hf(llama_dir, value_head=True)
    assert float(jnp.abs(with_head.value_head.get_value()).sum()) == 0.0
    tokens = jnp.arange(1, 9)[None]
    np.testing.assert_array_equal(plain(tokens), with_head(tokens))
    to_hf(with_head, tmp_path / "out", dtype="float32")
    np.testing.assert_array_equal(from_hf(tmp_path / "out")(tokens), plain(tokens))
    # A separate critic starts as a copy of the policy's trunk.
    separate = from_hf(llama_dir, value_head=True, separate_critic=True)
    for a, b in zip(
        jax.tree.leaves(nnx.state(separate.critic_layers)),
        jax.tree.leaves(nnx.state(separate.layers)),
    ):
        np.testing.assert_array_equal(a, b)


def _rewrite_weights(src, dst, edit):
    """Copies checkpoint `src` to `dst` with its single safetensors file passed through `edit`."""
    shutil.copytree(src, dst)
    tensors = edit(load_file(dst / "model.safetensors"))
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _with_extra(name, value):
    return lambda tensors: tensors | {name: value}


_LAYER0 = "model.layers.0."


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (
            lambda t: {k: v for k, v in t.items() if k != _LAYER0 + "mlp.up_proj.weight"},
            ValueError,
            r"lacks 1 tensors: \['model.layers.0.mlp.up_proj.weight'\]",
        ),
        (
            _with_extra("model.layers.0.self_attn.extra.weight", np.zeros(3, np.float32)),
            ValueError,
            "unexpected tensors: .*self_attn.extra.weight",
        ),
        (
            lambda t: t | {_LAYER0 + "self_attn.k_proj.weight": np.zeros((16, 64), np.float32)},
            ValueError,
            r"'model.layers.0.self_attn.k_proj.weight' has shape \(16, 64\), expected \(32, 64\)",
        ),
        (
            lambda t: t | {"model.norm.weight": np.zeros(64, np.int8)},
            ValueError,
            "'model.norm.weight' has dtype I8",
        ),
    ],
    ids=["missing", "extra", "shape", "dtype"],
)
def test_from_hf_rejects_bad_weights(llama_dir, tmp_path, edit, error, message):
    bad = _rewrite_weights(llama_dir, tmp_path / "bad", edit)
    with pytest.raises(error, match=message):
        from_hf(bad)


def test_from_hf_ignores_rotary_inv_freq(llama_dir, tmp_path):
    inv_freq = _with_extra(_LAYER0 + "self_attn.rotary_emb.inv_freq", np.ones(8, np.float32))
    model = from_hf(_rewrite_weights(llama_dir, tmp_path / "ok", inv_freq))
    want = load_file(llama_dir / "model.safetensors")["model.norm.weight"]
    np.testing.assert_array_equal(np.asarray(model.final_norm.scale.get_value()), want)


def test_from_hf_missing_files(llama_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_hf(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_hf(tmp_path / "empty")
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    shutil.copy(llama_dir / "config.json", only_config)
    (only_config / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="only safetensors.*pytorch_model.bin"):
        from_hf(only_config)


def test_from_hf_names_a_malformed_config(llama_dir, tmp_path):
    bad = shutil.copytree(llama_dir, tmp_path / "bad")
    (bad / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    with pytest.raises(ValueError, match=f"{bad / 'config.json'} is not valid JSON"):
        from_hf(bad)


def test_from_hf_index_errors_name_the_index_and_shard(tmp_path):
    broken = tmp_path / "broken"
    _hf_model("llama").save_pretrained(broken, max_shard_size="60KB")
    index = broken / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    shard = weight_map["model.layers.1.mlp.up_proj.weight"]
    (broken / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"names missing files.*{shard}"):
        from_hf(broken)
    index.write_text(json.dumps({"metadata": {"total_size": 1}}))
    with pytest.raises(ValueError, match=f"{index} has no 'weight_map'"):
        from_hf(broken)
    index.write_text("[]")
    with pytest.raises(ValueError, match=f"{index} is not a JSON object"):
        from_hf(broken)


def test_from_hf_without_mesh_uses_this_process_first_device(llama_dir, monkeypatch):
    """Multi-host: jax.devices()[0] belongs to process 0; each process must use its own."""
    local = jax.devices()[5]
    monkeypatch.setattr(jax, "local_devices", lambda *a, **k: [local])
    model = from_hf(llama_dir)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        assert var.get_value().devices() == {local}, path


_BIG = ModelConfig(vocab_size=2048, embed_dim=512, num_layers=4, num_heads=8, num_kv_heads=4,
                   head_dim=64, mlp_dim=1536)  # fmt: skip


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    """A ~59 MB float32 checkpoint of `_BIG`, written with numpy alone; largest tensor 4.2 MB."""
    path = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    d, f, v = _BIG.embed_dim, _BIG.mlp_dim, _BIG.vocab_size
    q, kv = _BIG.num_heads * _BIG.head_dim, _BIG.num_kv_heads * _BIG.head_dim
    per_layer = {"self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d),
                 "self_attn.v_proj": (kv, d), "self_attn.o_proj": (d, q), "mlp.gate_proj": (f, d),
                 "mlp.up_proj": (f, d), "mlp.down_proj": (d, f), "input_layernorm": (d,),
                 "post_attention_layernorm": (d,)}  # fmt: skip
    shapes = {"model.embed_tokens": (v, d), "lm_head": (v, d), "model.norm": (d,)}
    for i in range(_BIG.num_layers):
        shapes |= {f"model.layers.{i}.{name}": shape for name, shape in per_layer.items()}
    tensors = {f"{k}.weight": rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config(_BIG, dtype="float32")))
    sizes = [t.nbytes for t in tensors.values()]
    return path, sum(sizes), max(sizes)


def _peak_host_bytes(function) -> int:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_import_and_export_hold_one_tensor_or_shard_in_host_memory(big_dir, tmp_path, monkeypatch):
    path, total, largest = big_dir
    model = from_hf(path)  # compiles the per-layer writes outside the measurement
    peak = _peak_host_bytes(lambda: from_hf(path))
    # A tensor's read buffer and its cast; on CPU the embedding and head stay as device memory.
    assert peak < 4 * largest and peak < 0.3 * total, (peak, largest, total)

    # On CPU a fetched array is a view of device memory, which tracemalloc does not see; copying
    # it stands in for the host buffer an accelerator's transfer allocates.
    to_host = hf_io.sharding.gather_to_host
    monkeypatch.setattr(hf_io.sharding, "gather_to_host", lambda x: np.array(to_host(x), copy=True))
    shard = 6 * 10**6
    peak = _peak_host_bytes(
        lambda: to_hf(model, tmp_path / "a", dtype="float32", max_shard_size=shard)
    )
    assert len(list((tmp_path / "a").glob("model-*.safetensors"))) > 5
    assert peak < 1.5 * shard and peak < 0.2 * total, (peak, shard, total)
    # The measurement sees a whole-model buffer when there is one: a single-shard export.
    peak = _peak_host_bytes(lambda: to_hf(model, tmp_path / "b", dtype="float32"))
    assert peak > 0.9 * total
    want = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for p, var in nnx.to_flat_state(nnx.state(from_hf(tmp_path / "a"), nnx.Param)):
        np.testing.assert_array_equal(var.get_value(), want[p].get_value(), err_msg=str(p))


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_to_hf_refuses_non_empty_directory_then_overwrites(llama_model, tmp_path):
    model = llama_model
    out = tmp_path / "out"
    to_hf(model, out, max_shard_size="50KB")
    num_shards = len(list(out.glob("model-*.safetensors")))
    assert num_shards > 1
    (out / "tokenizer.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="not empty; pass overwrite=True"):
        to_hf(model, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    to_hf(model, out, overwrite=True)
    names = {p.name for p in out.iterdir()}
    assert names == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"}
    assert config_from_hf(json.loads((out / "config.json").read_text())) == model.cfg
    assert (out / "tokenizer.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging directory left behind


def _failing_on_call(n: int, function):
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise OSError("disk full")
        return function(*args, **kwargs)

    return wrapped


def test_to_hf_failing_midway_keeps_the_old_checkpoint(llama_model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    to_hf(llama_model, out, dtype="float32")
    (out / "tokenizer.json").write_text("{}")
    before = _snapshot(out)
    # The second of several shards fails to write.
    monkeypatch.setattr(hf_io, "save_file", _failing_on_call(2, hf_io.save_file))
    with pytest.raises(OSError, match="disk full"):
        to_hf(llama_model, out, max_shard_size="50KB", overwrite=True)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    # A failed first export leaves nothing at all, not a directory that looks like a checkpoint.
    monkeypatch.setattr(hf_io, "save_file", _failing_on_call(1, hf_io.save_file))
    with pytest.raises(OSError, match="disk full"):
        to_hf(llama_model, tmp_path / "fresh")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_to_hf_failing_to_rename_restores_the_old_checkpoint(llama_model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    to_hf(llama_model, out, max_shard_size="50KB")
    before = _snapshot(out)
    rename = Path.rename

    def rename_failing_into_place(self, target):
        if Path(target) == out and ".partial-" in self.name and not self.name.endswith(".old"):
            raise OSError("rename failed")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_failing_into_place)
    with pytest.raises(OSError, match="rename failed"):
        to_hf(llama_model, out, overwrite=True)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"max_shard_size": "5 parsecs"}, "max_shard_size='5 parsecs'"),
        ({"max_shard_size": 0}, "max_shard_size=0"),
        ({"extra_config": {"hidden_size": 1}}, r"may not set \['hidden_size'\]"),
    ],
)
def test_to_hf_rejects_bad_arguments(llama_model, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        to_hf(llama_model, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
