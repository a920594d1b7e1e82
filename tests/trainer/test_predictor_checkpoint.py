"""The predictor's checkpoint file follows verl's max_actor_ckpt_to_keep and default_hdfs_dir
(verl's own retention rule and hdfs_io; a local directory stands in for HDFS)."""

from __future__ import annotations

from verl_trace.trainer.hydra_config import compose_config
from verl_trace.trainer.predictor_checkpoint import PredictorFileRetention, copy_to_hdfs, max_to_keep


def _saves(root, steps):
    files = []
    for step in steps:
        folder = root / f"global_step_{step}"
        folder.mkdir(parents=True)
        (folder / "data.pt").write_bytes(b"verl's")
        path = folder / "trace_predictor.pt"
        path.write_bytes(f"state {step}".encode())
        files.append(path)
    return files


def test_keeps_the_newest_saves_like_verl(tmp_path):
    retention = PredictorFileRetention()
    files = _saves(tmp_path, [1, 2, 3, 4])
    for f in files:
        retention.register_checkpoint(str(f), 2)
    assert [f.exists() for f in files] == [False, False, True, True]
    assert (tmp_path / "global_step_1" / "data.pt").exists()  # verl's part of the folder is verl's business


def test_unlimited_by_default(tmp_path):
    retention = PredictorFileRetention()
    files = _saves(tmp_path, [1, 2, 3])
    for f in files:
        retention.register_checkpoint(str(f), None)
    assert all(f.exists() for f in files)


def test_max_to_keep_reads_verls_settings():
    assert max_to_keep(compose_config(overrides=["trainer.max_actor_ckpt_to_keep=3"])) == 3
    assert max_to_keep(compose_config()) is None
    assert max_to_keep(compose_config(overrides=["+trainer.remove_previous_ckpt_in_save=true"])) == 1


def test_copied_to_default_hdfs_dir(tmp_path):
    (local,) = _saves(tmp_path / "local", [5])
    remote_root = tmp_path / "remote"
    cfg = compose_config(overrides=[f"trainer.default_hdfs_dir={remote_root}"])
    target = copy_to_hdfs(local, cfg, 5)
    assert target == str(remote_root / "global_step_5" / "trace_predictor.pt")
    assert (remote_root / "global_step_5" / "trace_predictor.pt").read_bytes() == b"state 5"
    assert copy_to_hdfs(local, compose_config(), 5) is None
