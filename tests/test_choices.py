"""Choices: one registry per choice field, refused by name where the object is built, and the
CLI's flags: a one-line help for every field, a choice field's choices, one line for a bad one."""

import argparse
import subprocess
import sys

import pytest

from ranking_lib import choices, cli
from ranking_lib.core.config import RunConfig, field_doc, field_kind
from ranking_lib.core.errors import RankingError
from ranking_lib.core.registry import Registry


def test_registry_names_get_and_one_line_refusal():
    r = Registry("colour")
    r.add("red", 1)

    @r.register("blue")
    def blue():
        return 2

    assert r.names() == ("red", "blue") and list(r) == ["red", "blue"] and "red" in r and len(r) == 2
    assert r.get("red") == 1 and r.get("blue") is blue and r.check("blue") == "blue"
    with pytest.raises(RankingError) as e:
        r.get("green")
    assert str(e.value) == "colour must be one of red, blue (got 'green')"
    with pytest.raises(ValueError, match="registered twice"):
        r.add("red", 3)


def test_every_string_choice_field_has_a_registry_holding_its_default():
    strings = {n for n in RunConfig.field_names() if field_kind(n) == "str"}
    assert set(choices.REGISTRIES) <= strings
    defaults = RunConfig()
    for name, registry in choices.REGISTRIES.items():
        assert registry.field == name
        assert getattr(defaults, name) in registry, name
    # the string fields that are not choices: paths, and device (core's own, with cuda:N)
    assert strings - set(choices.REGISTRIES) == {"data_dir", "run_dir", "cache_dir", "wordnet_dir", "device"}


@pytest.mark.parametrize("field", sorted(choices.REGISTRIES))
def test_an_unknown_choice_passes_the_config_and_is_refused_by_its_registry(field):
    cfg = RunConfig(**{field: "nope"})  # core does not know the builders' names
    with pytest.raises(RankingError) as e:
        choices.check_choices(cfg)
    assert str(e.value) == f"{field} must be one of {', '.join(choices.REGISTRIES[field].names())} (got 'nope')"


def test_builders_refuse_unknown_names_in_one_line():
    from ranking_lib.models.backbones import create_backbone
    from ranking_lib.models.model import EmbeddingNet
    from ranking_lib.models.runtimes import resolve_runtime
    from ranking_lib.retrieval.rerank import Reranker

    for build, field in ((lambda: create_backbone("vgg"), "backbone"),
                         (lambda: EmbeddingNet(pretrained=False, architecture="vgg"), "architecture"),
                         (lambda: EmbeddingNet(pretrained=False, head="vgg"), "head"),
                         (lambda: resolve_runtime("vgg", "cpu", False), "frozen_runtime"),
                         (lambda: Reranker("vgg"), "rerank")):
        with pytest.raises(RankingError, match=rf"^{field} must be one of .* \(got 'vgg'\)$"):
            build()


def test_a_pipeline_step_refuses_an_unknown_choice_before_any_work(tmp_path):
    from ranking_lib import workflow

    run = tmp_path / "run"
    with pytest.raises(RankingError, match=r"^miner must be one of none, batch_hard \(got 'hardest'\)$"):
        workflow.sample(RunConfig(run_dir=str(run), data_dir=str(tmp_path / "no-data"), miner="hardest"))
    assert not run.exists()


# ---------------------------------------------------------------------------- the CLI's flags
def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_config_flag_has_a_one_line_help_and_a_choice_flag_its_choices():
    flags = {"--" + n.replace("_", "-"): n for n in RunConfig.field_names()}
    commands = _subcommands(cli.build_parser())
    assert {"prepare", "sample", "train", "embed", "evaluate", "query", "all"} <= set(commands)
    for command, parser in commands.items():
        if command == "verify-run":
            continue
        seen = set()
        for action in parser._actions:
            name = flags.get(action.option_strings[0]) if action.option_strings else None
            if name is None:
                continue
            seen.add(name)
            assert action.help and "\n" not in action.help and field_doc(name), (command, name)
            if name in choices.REGISTRIES:
                assert tuple(action.choices) == choices.REGISTRIES[name].names(), (command, name)
        assert seen == set(RunConfig.field_names()), command
    unexplained = [(command, a.option_strings or a.dest) for command, parser in commands.items()
                   for a in parser._actions if not a.help]
    assert not unexplained, "flags without a line of help"
    text = commands["train"].format_help()
    assert "--optimizer {sgd,adam,adamw,adamw_fused}" in text
    assert "Optimiser: sgd (Nesterov momentum), adam, adamw or adamw_fused (torch's fused AdamW kernel)." in \
        " ".join(text.split())  # argparse wraps the help


def test_flag_help_is_the_first_sentence_with_the_default():
    assert cli.flag_help("backbone_lr_scale") == "The backbone learns at lr * backbone_lr_scale (the new head at lr). (default: 0.1)"
    assert cli.flag_help("ks").endswith("(default: 1 10 30)")
    assert cli.flag_help("pretrained").endswith("(default: on)")
    assert cli.flag_help("cache_dir") == ("Decoded-image cache; default <data_dir>/.ranking_cache (or a user cache "
                                          "dir).")  # None: no default shown


def test_an_unknown_choice_flag_is_one_line_and_exit_2(tmp_path):
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "ranking_lib", "train", "--run-dir", str(run), "--head", "cnn"],
                       capture_output=True, text=True, timeout=120)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert err[0].startswith("error: argument --head: invalid choice: 'cnn' (choose from 'linear', 'mlp')"), err
    assert not run.exists()
