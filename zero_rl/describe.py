"""What a run is, decided once from its config: the prompt template, what ends a response, the
model's structure and the tokenizer.

`describe_run(config)` is the one rule for these. Training writes its result to
`workdir/run.json` next to `config.json`; evaluation, the notebooks, pass-rate filtering and the
benchmarks read it back (`read_description(workdir)`) instead of deciding again, so a policy is
always sampled with the template and stops it was trained with.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import ml_collections

from zero_rl import config as config_lib
from zero_rl.data.templates import default_template, get_template, stop_token_ids
from zero_rl.models import ModelConfig, config_from_hf, read_config_json
from zero_rl.sampling import SamplingOptions
from zero_rl.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

DESCRIPTION_FILE = "run.json"


@dataclasses.dataclass(frozen=True)
class RunDescription:
    """A resolved run. `tokenizer` is loaded from `tokenizer_path`; it is not written."""

    template: str  # a zero_rl.data.templates name
    stop_token_ids: tuple[int, ...]  # the tokenizer's, plus the template's one-token stops
    stop_strings: tuple[str, ...]  # the template's (a response is cut after the first)
    tokenizer_path: str
    model: ModelConfig
    tokenizer: Tokenizer = dataclasses.field(compare=False, repr=False)

    def sampling_options(
        self, config: ml_collections.ConfigDict, *, evaluation: bool = False
    ) -> SamplingOptions:
        """`config`'s rollout (or `evaluation`) sampling with this run's stops."""
        return config_lib.sampling_options(
            config, evaluation=evaluation, stop_token_ids=self.stop_token_ids,
            stop_strings=self.stop_strings,
        )  # fmt: skip

    def to_json(self) -> dict:
        return {
            "template": self.template,
            "stop_token_ids": list(self.stop_token_ids),
            "stop_strings": list(self.stop_strings),
            "tokenizer_path": self.tokenizer_path,
            "model": dataclasses.asdict(self.model),
        }


def describe_run(
    config: ml_collections.ConfigDict,
    *,
    hf_model: str | None = None,
    tokenizer: Tokenizer | None = None,
) -> RunDescription:
    """The run `config` describes, or with `hf_model` the HF model directory evaluated under
    `config` (its architecture, and its tokenizer unless `tokenizer.path` is set).

    The template is `data.template`, else SimpleRL-Zoo's for the model: from the preset's
    name, else the HF directory's name ("Qwen2.5-Math-7B"), else its architecture; a model
    with neither (the tiny config) gets the tiny model's.
    """
    path = config_lib.tokenizer_path(config, hf_model)
    if os.path.exists(path):  # a path relative to today's directory means nothing tomorrow
        path = os.path.abspath(path)
    if tokenizer is None:
        tokenizer = load_tokenizer(path)
    hf_dir = hf_model or config.model.hf_path
    if hf_model:
        # The directory defines the network whatever the config's preset or dims say.
        model = config_from_hf(read_config_json(hf_model)).replace(
            dtype=config.model.dtype, param_dtype=config.model.param_dtype
        )
    else:
        model = config_lib.model_config(config, tokenizer.vocab_size)
    template = config.data.template or default_model_template(config.model.preset, hf_dir, model)
    get_template(template)  # an unknown name fails here, naming the valid ones
    return RunDescription(
        template=template,
        stop_token_ids=tuple(stop_token_ids(tokenizer, template)),
        stop_strings=tuple(get_template(template).stop_strings),
        tokenizer_path=path,
        model=model,
        tokenizer=tokenizer,
    )


def default_model_template(preset: str, hf_dir: str | None, model: ModelConfig) -> str:
    """SimpleRL-Zoo's template for a model: from the preset's name, else from the HF
    checkpoint's directory name ("Qwen2.5-Math-7B"), else from its architecture."""
    if preset:
        return default_template(preset)
    if not hf_dir:
        return default_template("tiny")
    names = [os.path.basename(os.path.normpath(hf_dir)), model.hf_architecture]
    for name in names:
        try:
            template = default_template(name)
        except ValueError:
            continue
        log.info("prompt template %s chosen from %r (set data.template to change it)",
                 template, name)  # fmt: skip
        return template
    raise ValueError(f"no default template for {names}; set data.template")


def write_description(description: RunDescription, workdir: str) -> None:
    """`workdir/run.json`, written whole and then renamed (a reader never sees half a file)."""
    path = os.path.join(workdir, DESCRIPTION_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(description.to_json(), f, indent=2)
    os.replace(path + ".tmp", path)


def read_description(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    tokenizer: Tokenizer | None = None,
) -> RunDescription:
    """The description a trainer run wrote to `workdir/run.json`, with its tokenizer loaded.

    `config` is the run's config as the reader uses it (default: the saved `config.json`); a
    `data.template` or `tokenizer.path` set there that differs from the saved one wins (an
    evaluation under another template), and the stops follow. A workdir from before run.json
    existed is described from `config` by `describe_run`.
    """
    if config is None:
        config = config_lib.load_run_config(workdir)
    path = os.path.join(workdir, DESCRIPTION_FILE)
    if not os.path.isfile(path):
        return describe_run(config, tokenizer=tokenizer)
    saved = _read_saved(path)
    template = config.data.template or saved.template
    get_template(template)
    if tokenizer is None:
        tokenizer_path = config.tokenizer.path or saved.tokenizer_path
        if not os.path.exists(tokenizer_path):  # the package's tiny tokenizer, reinstalled?
            tokenizer_path = config_lib.tokenizer_path(config)
        if not os.path.exists(tokenizer_path):
            raise FileNotFoundError(
                f"{path}: the run's tokenizer {tokenizer_path!r} is not there (moved, or on "
                "another machine?); set tokenizer.path to where it is now"
            )
        tokenizer = load_tokenizer(tokenizer_path)
    else:
        tokenizer_path = saved.tokenizer_path
    same = template == saved.template and tokenizer_path == saved.tokenizer_path
    return dataclasses.replace(
        saved,
        template=template,
        stop_token_ids=saved.stop_token_ids if same else tuple(stop_token_ids(tokenizer, template)),
        stop_strings=tuple(get_template(template).stop_strings),
        tokenizer_path=tokenizer_path,
        tokenizer=tokenizer,
    )


def _read_saved(path: str) -> RunDescription:
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    try:
        model = dict(saved["model"])
        rope_scaling = model.pop("rope_scaling")
        return RunDescription(
            template=saved["template"],
            stop_token_ids=tuple(int(i) for i in saved["stop_token_ids"]),
            stop_strings=tuple(saved["stop_strings"]),
            tokenizer_path=saved["tokenizer_path"],
            model=ModelConfig(**model).replace(rope_scaling=rope_scaling),
            tokenizer=None,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a run description: {err!r}") from err
