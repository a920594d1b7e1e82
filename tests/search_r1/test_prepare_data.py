"""Data preparation: the mini set and Search-R1/FlashRAG-shaped files into parquet that verl's RLHFDataset reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "recipes" / "search_r1" / "prepare_data.py"
TOOL_YAML = ROOT / "recipes" / "search_r1" / "config" / "tool_config" / "search_tool_config.yaml"


def search_r1_rows() -> list[dict]:
    """Rows shaped like Search-R1's processed nq_hotpotqa parquet (and verl's preprocess output)."""
    return [
        {"id": "train_0", "question": "who wrote the song kogridale", "golden_answers": ["Vaikram Puneth", "V. Puneth"],
         "data_source": "nq", "prompt": [{"role": "user", "content": "old prompt"}], "ability": "fact-reasoning",
         "reward_model": {"ground_truth": {"target": ["Vaikram Puneth", "V. Puneth"]}, "style": "rule"},
         "extra_info": {"index": 0, "split": "train"}},
        {"id": "train_1", "question": "Which country is Gemmar in?", "golden_answers": None,
         "data_source": "hotpotqa", "prompt": [{"role": "user", "content": "old prompt"}], "ability": "fact-reasoning",
         "reward_model": {"ground_truth": {"target": ["Fotreia"]}, "style": "rule"},
         "extra_info": {"index": 1, "split": "train"}},
    ]


def test_mini_set_converts_with_the_cli(tmp_path, mini_records):
    done = subprocess.run([sys.executable, str(SCRIPT), "--mini", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    train = pq.read_table(tmp_path / "train.parquet").to_pylist()
    test = pq.read_table(tmp_path / "test.parquet").to_pylist()
    assert len(train) + len(test) == len(mini_records)
    row = test[0]
    assert row["agent_name"] == "trace_agent" and row["data_source"] == "mini"
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["prompt"][1]["content"].endswith("Question: " + row["extra_info"]["question"])
    assert "<answer>" in row["prompt"][1]["content"]
    assert row["reward_model"] == {"style": "rule", "ground_truth": {"target": row["reward_model"]["ground_truth"]["target"]}}
    source = next(r for r in mini_records if r["id"] == row["extra_info"]["id"])
    assert row["reward_model"]["ground_truth"]["target"] == source["golden_answers"]
    assert row["extra_info"]["gold_chain"] == source["metadata"]["chain"]
    assert row["extra_info"]["tools_kwargs"] == {"search": {"create_kwargs": {"question": source["question"]}}}
    assert [r["extra_info"]["index"] for r in train] == list(range(len(train)))


def test_search_r1_parquet_and_flashrag_jsonl(tmp_path, prepare):
    parquet = tmp_path / "nq_hotpotqa_train" / "train.parquet"
    parquet.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(search_r1_rows()), parquet)
    flashrag = tmp_path / "bamboogle" / "test.jsonl"
    flashrag.parent.mkdir()
    flashrag.write_text(json.dumps({"id": "test_7", "question": "Who founded Bertrexcorp", "golden_answers": ["Baikfuk Lobran"],
                                    "metadata": {"type": "compositional"}}) + "\n")

    rows = prepare.convert([parquet, flashrag], "train", agent_name="tool_agent", template="bare", progress=False)
    assert [r["data_source"] for r in rows] == ["nq", "hotpotqa", "bamboogle"]
    assert [r["reward_model"]["ground_truth"]["target"] for r in rows] == [
        ["Vaikram Puneth", "V. Puneth"], ["Fotreia"], ["Baikfuk Lobran"]]
    assert rows[0]["prompt"] == [{"role": "user", "content": "Question: who wrote the song kogridale?"}]
    assert rows[2]["extra_info"]["id"] == "test_7" and "gold_chain" not in rows[2]["extra_info"]
    assert {r["agent_name"] for r in rows} == {"tool_agent"}

    sampled = prepare.convert([parquet, flashrag], "test", sample=2, seed=1, progress=False)
    assert len(sampled) == 2 and sampled == prepare.convert([parquet, flashrag], "test", sample=2, seed=1, progress=False)


@pytest.mark.parametrize(
    "row, message",
    [({"golden_answers": ["a"]}, "row 0: field 'question'"),
     ({"question": "   ", "golden_answers": ["a"]}, "row 0: field 'question'"),
     ({"question": "q?"}, "row 0: no gold answers"),
     ({"question": "q?", "golden_answers": []}, "row 0: no gold answers"),
     ({"question": "q?", "reward_model": {"ground_truth": {"target": [None]}}}, "row 0: no gold answers")],
)
def test_bad_rows_are_named(tmp_path, prepare, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(prepare.InputError, match=message):
        prepare.convert([path], "train", progress=False)


def test_cli_reports_bad_input_with_exit_code_2(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q?", "golden_answers": ["a"]}\n{not json}\n')
    done = subprocess.run([sys.executable, str(SCRIPT), "--input", str(path), "--out-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "bad.jsonl:2: not valid JSON" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_verl_rlhf_dataset_reads_the_output(tmp_path, prepare, mini_corpus_rows):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from verl_trace.testing.tiny import build_tokenizer

    rows = prepare.convert([prepare.MINI_DIR / "test.jsonl"], "test", progress=False)[:8]
    prepare.write_parquet(rows, tmp_path / "test.parquet")
    tokenizer = build_tokenizer([r["contents"] for r in mini_corpus_rows], vocab_size=600)
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 1024, "filter_overlong_prompts": True,
                               "filter_overlong_prompts_workers": 1, "cache_dir": str(tmp_path / "cache"),
                               "tool_config_path": str(TOOL_YAML)})
    dataset = RLHFDataset([str(tmp_path / "test.parquet")], tokenizer, config)
    assert len(dataset) == 8 and dataset.tool_schemas[0]["function"]["name"] == "search"
    item = dataset[3]
    assert item["agent_name"] == "trace_agent" and item["raw_prompt"] == rows[3]["prompt"]
    assert item["tools_kwargs"] == rows[3]["extra_info"]["tools_kwargs"] and item["index"] == 3
    assert list(item["reward_model"]["ground_truth"]["target"]) == rows[3]["reward_model"]["ground_truth"]["target"]
