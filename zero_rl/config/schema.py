"""The RL run's config schema: every key with its default (`base_config`), and the SimpleRL-Zoo
recipe the full-size configs start from (`simplerl_zoo_config`).

Config files in `configs/` start from `base_config()` and change what they need, so every run
has the same keys: a locked config turns a typo on the command line into an error.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
from ml_collections import config_dict

from zero_rl import sharding
from zero_rl.data.difficulty import default_difficulty
from zero_rl.models.config import get_preset
from zero_rl.tasks import TASKS

ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets")
TINY_TOKENIZER = os.path.join(ASSETS, "tiny_addition.model")
TINY_VOCAB_SIZE = 48  # of TINY_TOKENIZER


def tiny_task_tokenizer(task: str) -> str:
    """The shipped tiny tokenizer of a generated task's tiny config (`configs/<task>_tiny.py`;
    rebuilt by `launch/make_tiny_tokenizer.py --config=...`)."""
    return os.path.join(ASSETS, f"tiny_{task}.model")


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    """AdamW settings (see zero_rl.optim.make_optimizer): the RL defaults, overridden."""
    base = dict(
        lr=5e-7,
        schedule="constant",
        warmup_steps=0,
        end_lr_ratio=0.0,
        weight_decay=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        grad_clip=1.0,
        mu_dtype="float32",
    )
    return ml_collections.ConfigDict(base | overrides)


def sft_stage_config() -> ml_collections.ConfigDict:
    """The SFT loop's settings (`zero_rl.train.sft.train_sft`), as the RL config's built-in
    stage (`config.sft`) and `launch/sft.py`'s run (`sft_run_config().sft`) both hold them."""
    return ml_collections.ConfigDict(
        dict(
            steps=0,
            batch_size=32,
            seq_len=64,
            grad_accum=1,
            seed=0,
            log_every=50,
            checkpoint_every=1000,
            overflow="error",  # a document longer than seq_len: "error", or "truncate" it
            logits_chunk=512,  # the loss's vocabulary projection, this many tokens at a time
            optim=optimizer_config(lr=1e-3, schedule="cosine", warmup_steps=20, grad_clip=1.0),
        )
    )


def sft_run_config() -> ml_collections.ConfigDict:
    """`launch/sft.py`'s schema: every key with its default. SFT config files start from it,
    as RL config files start from `base_config()`, and a locked config rejects a mistyped key."""
    c = ml_collections.ConfigDict()
    # A random model with these dimensions, or an HF checkpoint when hf_path is set (then the
    # dimensions are ignored; rope_theta / max_position, if set, override the checkpoint's, e.g.
    # to fine-tune on traces longer than it was trained for).
    c.model = ml_collections.ConfigDict(
        dict(
            hf_path="",
            vocab_size=64,
            embed_dim=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=4,
            head_dim=16,
            mlp_dim=256,
            rope_theta=config_dict.placeholder(float),
            max_position=config_dict.placeholder(int),
            dtype="float32",
            param_dtype="float32",
            remat="none",
            init_seed=0,
        )
    )
    c.tokenizer = TINY_TOKENIZER  # a SentencePiece model or an HF tokenizer directory
    # source: "synthetic_addition", or a .jsonl / .json / .parquet file of prompt/response records.
    c.data = ml_collections.ConfigDict(
        dict(
            source="synthetic_addition",
            # How a record becomes a (prompt, response) pair: "fields" takes prompt_field and
            # response_field verbatim; "openr1_math", "light_r1", "limo", "s1k" and "am" read
            # those datasets' own fields (zero_rl.data.sft_formats has the table).
            format="fields",
            prompt_field="prompt",
            response_field="response",
            template="plain",
            carry_error_rate=0.5,  # synthetic_addition: how often the teacher forgets a carry
            limit=config_dict.placeholder(int),
            # A record without both fields: "raise" names its file and line, "skip" leaves it
            # out and reports the count.
            on_error="raise",
        )
    )
    c.sft = sft_stage_config()
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.export_hf = True  # the fine-tuned model and its tokenizer to WORKDIR/hf
    c.export_dtype = "float32"  # "bfloat16" halves the files of a large model
    return c


def base_config() -> ml_collections.ConfigDict:
    """Defaults: SimpleRL-Zoo's GRPO recipe where it has one."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 100
    c.log_every = 1
    # Every eval step must be a checkpoint step (eval_every a multiple of checkpoint_every):
    # the best-by-eval checkpoint is kept from the checkpoints that carry an eval/accuracy.
    c.eval_every = 10
    c.checkpoint_every = 10
    c.keep_checkpoints = 3
    c.async_checkpoint = True
    c.num_sample_texts = 4  # responses written to TensorBoard each log step (several prompts)
    c.progress_bars = True  # tqdm bars for evaluation (process 0, interactive terminals only)
    # The smallest slice this run is planned to fit, "<accelerator> [mesh <axes>][; notes]",
    # e.g. "v5p-256 mesh fsdp=64,tensor=2": `python launch/plan.py --config=...` checks it.
    c.hardware = ""

    c.model = ml_collections.ConfigDict()
    c.model.preset = ""  # a name from zero_rl.models.PRESETS, or "" to use `dims`
    c.model.dims = ml_collections.ConfigDict()  # ModelConfig fields for a custom model
    c.model.hf_path = ""  # HF checkpoint directory to start from ("" = random init)
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "full"
    # "chunked" bounds attention scores to [batch, heads, attention_chunk, length] blocks.
    c.model.attention = "xla"
    c.model.attention_chunk = 512

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""  # "" = the HF checkpoint directory's tokenizer

    c.data = ml_collections.ConfigDict()
    # A benchmark name, "synthetic_addition", a task ("countdown", "knights_knaves": settings
    # in data.tasks), or a file path.
    c.data.train = "gsm8k_train"
    c.data.eval = "math500"
    c.data.eval_size = 0  # 0 = the whole eval set
    c.data.difficulty = ""  # "", "easy", "medium" or "hard" (SimpleRL-Zoo levels)
    # How records of a data file (data.train / data.eval given as a path) become examples.
    c.data.question_field = "problem"
    # MATH train has no answer field: the gold answer is the last \boxed{} of the solution.
    # False reads `answer_field` instead (GSM8K-style or pre-extracted answers).
    c.data.answer_from_solution = True
    c.data.answer_field = "answer"
    c.data.solution_field = "solution"
    c.data.level_field = "level"  # MATH's "Level 3" (needed by data.difficulty)
    c.data.id_field = ""  # "" = ids from line / row numbers
    c.data.gold_format = ""  # a zero_rl.rewards.DATASETS name (e.g. "gsm8k"), "" = plain answers
    c.data.on_error = "raise"  # or "skip": bad records are left out, counted and logged
    # Generator settings of each task (zero_rl.tasks), used when data.train / data.eval names it.
    c.data.tasks = ml_collections.ConfigDict(
        {name: dataclasses.asdict(cls()) for name, cls in TASKS.items()}
    )
    c.data.template = ""  # "" = the model family's SimpleRL-Zoo default
    # An online curriculum (zero_rl.data.curriculum): each batch drawn from difficulty buckets,
    # easiest first, by a mix that moves from stage to stage. "none" = uniform shuffled batches.
    c.data.curriculum = ml_collections.ConfigDict(
        dict(
            schedule="none",  # "none", "steps" or "threshold"
            by="level",  # buckets by Example.level ("level") or by measured "pass_rate"
            levels="1-2,3,4-5",  # by="level": groups of MATH levels
            pass_rate_file="",  # by="pass_rate": launch/filter_difficulty.py's pass rates
            pass_rate_edges="0.7,0.3",  # by="pass_rate": cut points, easiest bucket first
            # "START:w1,w2,...; ...", one weight per bucket. START is the step a stage begins
            # at ("steps"), or the running pass rate of the previous stage's hardest bucket
            # that ends it ("threshold", e.g. "0:1,0,0; 0.8:0.5,0.5,0; 0.6:0.2,0.3,0.5").
            stages="0:1,0,0; 20:0.5,0.5,0; 40:0.2,0.3,0.5",
            decay=0.9,  # the running pass rates' EMA over steps (horizon ~1 / (1 - decay))
            min_stage_steps=5,  # "threshold": steps a stage lasts at least
        )
    )

    # Periodic benchmark evaluation (besides `eval/accuracy` on data.eval at every eval step).
    c.eval = ml_collections.ConfigDict()
    c.eval.benchmarks = ""  # comma-separated, e.g. "gsm8k,math500"; "" = none
    c.eval.num_samples = 1
    c.eval.temperature = 0.0
    c.eval.top_p = 1.0
    c.eval.limit = 0  # examples per benchmark (0 = all)
    # How evaluation finds answers: "lenient" also reads unmarked ones ("Answer: 5", a bare
    # expression, the last number), as benchmark graders do; "strict" is the reward's rule.
    c.eval.extraction = "lenient"

    c.sampling = ml_collections.ConfigDict()
    c.sampling.max_prompt_len = 1024
    c.sampling.max_new_tokens = 8192
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0
    c.sampling.eval_max_new_tokens = 0  # 0 = max_new_tokens
    # Prompts per sampler call (0 = all rl.num_prompts at once). The KV cache holds
    # prompts_per_call * rl.num_samples rows: lower it when long responses do not fit.
    c.sampling.prompts_per_call = 0
    # The decode loop in this many segments; each attends over the cache slots filled by the
    # end of it, not the whole cache (same outputs; the decode program is that many times
    # larger to compile). Speeds up long responses; 4 in the 8K SimpleRL-Zoo configs.
    c.sampling.decode_segments = 1
    # The rollout engine: "continuous" (a pool of sampling.slots rows, a row whose response
    # ends refilled with the next prompt inside the compiled loop) or "static" (each call
    # decodes until its longest response ends; prompts_per_call and decode_segments apply).
    c.sampling.engine = "continuous"
    # Rows of the engine's KV cache, slots x (max_prompt_len + max_new_tokens) tokens: the
    # knob that bounds rollout memory (0 = one per response of the batch, no refilling). A
    # multiple of the batch-parallel devices, at least rl.num_samples.
    c.sampling.slots = 0
    c.sampling.prefill_prompts = 1  # prompts prefilled together when slots free up
    # Once no prompt waits, the pool halves (live rows moved) each time half of it is idle,
    # up to this many times: the longest responses then run in a smaller pool.
    c.sampling.drain_phases = 3

    c.rl = ml_collections.ConfigDict()
    c.rl.num_prompts = 1024
    c.rl.num_samples = 8
    c.rl.minibatch_size = 256  # rows (responses) per optimiser step
    c.rl.microbatch_size = 0  # rows per gradient-accumulation step (0 = whole minibatch)
    c.rl.epochs = 1
    c.rl.estimator = "grpo"  # or dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline, gae (PPO)
    # PPO ("gae"): the critic is a value head on the policy's trunk ("shared") or on a trunk of
    # its own ("separate", initialised as a copy of the policy's).
    c.rl.critic = "shared"
    c.rl.gamma = 1.0
    c.rl.lam = 1.0
    c.rl.vf_coef = 0.5
    c.rl.vf_clip = 0.2
    c.rl.adv_eps = 1e-6
    c.rl.adv_std_ddof = 1  # of the GRPO group std: 1 = unbiased, like torch.std in verl/OpenRLHF
    c.rl.kl_in_reward_coef = 0.0  # > 0 puts the KL into the reward instead of the loss
    c.rl.dynamic_sampling = False
    c.rl.max_draws = 3
    c.rl.overlong_filter = False
    c.rl.logprob_chunk = 512
    c.rl.loss = ml_collections.ConfigDict(
        dict(
            clip_low=0.2,
            clip_high=0.2,
            dual_clip=ml_collections.FieldReference(None, field_type=float),
            ratio_level="token",
            aggregation="token_mean",
            norm_len=ml_collections.FieldReference(None, field_type=int),
            kl_coef=1e-4,
            kl_estimator="k3",
            kl_clamp=ml_collections.FieldReference(None, field_type=float),
            entropy_coef=0.001,
            tis_cap=ml_collections.FieldReference(None, field_type=float),
        )
    )

    c.reward = ml_collections.ConfigDict(
        dict(
            mode="correctness",
            correct_reward=1.0,
            incorrect_reward=0.0,
            correct_boxed_reward=1.0,
            correct_unboxed_reward=0.5,
            wrong_boxed_reward=-0.5,
            no_answer_reward=-1.0,
            format_penalty=0.0,
            extraction="strict",  # a marked answer is required ("lenient": see eval)
            last_number_fallback=False,
            timeout_s=2.0,
            num_workers=2,
            overlong_cache_len=0,
            overlong_factor=1.0,
            # Length-aware rewards: "cosine" (Yeo et al. 2025) replaces the reward above by one
            # falling with length for correct answers and rising for wrong ones; a coef > 0
            # adds Kimi k1.5's penalty on a group's long correct responses.
            length_reward="none",
            cosine_correct_short=2.0,
            cosine_correct_long=1.0,
            cosine_wrong_short=-10.0,
            cosine_wrong_long=0.0,
            cosine_exceed=-10.0,
            length_penalty_coef=0.0,
        )
    )

    c.optim = optimizer_config()

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    # Logical axis -> mesh axes ("data,fsdp"; "" = replicated), used for params, optimiser
    # state, reference, KV cache, batches and activations of the RL stage.
    c.sharding = ml_collections.ConfigDict(sharding.rules_to_config())

    # Optional SFT stage that makes the base model first (the tiny default uses it).
    c.sft = sft_stage_config()
    # Generated tasks only: how often the teacher makes its systematic slip (addition forgets a
    # carry, countdown drops needed parentheses, knights_knaves reads "or" as "and").
    c.sft.carry_error_rate = 0.0
    return c


def simplerl_zoo_config(
    preset: str, *, max_response_len: int = 8192, hardware: str = ""
) -> ml_collections.ConfigDict:
    """SimpleRL-Zoo's recipe for one base model: GRPO, 1024 prompts x 8 samples, PPO minibatch
    256 prompts, lr 5e-7 constant, grad clip 1.0, k3 KL loss 1e-4 (1e-3 above 14B), entropy
    0.001, clip 0.2, temperature 1.0, 1024 prompt / `max_response_len` response tokens.

    Training data: SimpleRL-Zoo builds its sets from the MATH train split (not shipped; point
    `data.train` at a MATH-format JSONL/parquet with problem, solution/answer and level).
    """
    c = base_config()
    c.model.preset = preset
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "full"
    # 9,216-token sequences: [heads, 9216, 9216] score blocks would dominate memory.
    c.model.attention = "chunked"
    c.hardware = hardware
    c.total_steps = 100
    c.eval_every = 5
    c.checkpoint_every = 5
    c.data.train = "data/math_train.jsonl"
    c.data.answer_from_solution = True  # MATH train: the solution's last \boxed{}
    c.data.gold_format = "math"
    c.data.eval = "math500"
    c.data.difficulty = default_difficulty(preset)  # the set SimpleRL-Zoo trained it on
    c.data.template = ""  # the family default (zero_rl.data.default_template)
    c.sampling.max_prompt_len = 1024
    c.sampling.max_new_tokens = max_response_len
    c.sampling.decode_segments = 4  # the static engine's
    # 256 slots: 32 responses per slot at 1024 x 8, and 16 slots per device on 16 devices (a
    # 7B model's 256 x 9216-token cache is 309 GB in bf16).
    c.sampling.slots = 256
    c.rl.num_prompts = 1024
    c.rl.num_samples = 8
    c.rl.minibatch_size = 256 * 8  # 256 prompts' groups per optimiser step: 4 updates per step
    c.rl.microbatch_size = 64
    c.rl.loss.kl_coef = 1e-3 if get_preset(preset).num_params() > 15e9 else 1e-4
    c.rl.loss.kl_estimator = "k3"
    c.rl.loss.entropy_coef = 0.001
    c.rl.loss.clip_low = 0.2
    c.rl.loss.clip_high = 0.2
    c.optim.lr = 5e-7
    c.optim.schedule = "constant"
    c.optim.grad_clip = 1.0
    return c
