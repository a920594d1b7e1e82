import pytest
from omegaconf import OmegaConf

from verl_trace.allocation import build_allocator
from verl_trace.config import TraceConfigError, load_trace_config


def test_defaults_and_omegaconf_input():
    cfg = load_trace_config(OmegaConf.create({"allocator": "tree_random", "budget": {"leaves_per_prompt": 8}}))
    assert cfg.allocator == "tree_random" and cfg.budget.leaves_per_prompt == 8
    assert build_allocator(cfg).name == "tree_random"
    assert load_trace_config(None).allocator == "trace"


@pytest.mark.parametrize(
    "raw,field",
    [
        ({"allocator": "bogus"}, "trace.allocator"),
        ({"budget": {"leaves_per_prompt": -3}}, "trace.budget.leaves_per_prompt"),
        ({"budget": {"leaves_per_prompt": 1}}, "budget.leaves_per_prompt (1) is smaller than budget.min_leaves_per_root"),
        ({"allocation": {"rounds": -1}}, "trace.allocation.rounds"),
        ({"allocation": {"initial_fraction": 0}}, "trace.allocation.initial_fraction"),
        ({"predictor": {"kind": "gp"}}, "trace.predictor.kind"),
        ({"predictor": {"members": 0}}, "trace.predictor.members"),
        ({"advantage": {"value": "median"}}, "trace.advantage.value"),
        ({"ready_fraction": 0}, "trace.ready_fraction"),
        ({"budgett": {}}, "trace.budgett"),
        ({"allocation": {"pool_factr": 2}}, "trace.allocation.pool_factr"),
    ],
)
def test_bad_settings_fail_naming_the_field(raw, field):
    with pytest.raises(TraceConfigError) as e:
        load_trace_config(raw)
    assert field in str(e.value)


def test_non_mapping_is_rejected():
    with pytest.raises(TraceConfigError, match="expected a mapping"):
        load_trace_config(["trace"])
