"""The DAO-G training loop: it learns, it resumes bit-identically, and it runs under torchrun (2 CPU processes)."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from xtalforge.crystal import Crystal
from xtalforge.data.batch import collate
from xtalforge.data.dataset import load_csv
from xtalforge.errors import XtalforgeError
from xtalforge.models.dao_g import DAOG
from xtalforge.training.train import TrainConfig, cdvae_overrides, parse_config, train

TINY = {"hidden": 16, "layers": 1, "heads": 2, "n_freq": 2, "batch_atoms": 40, "max_crystals": 8, "warmup_steps": 2,
        "log_every": 1, "threads": 1}


@pytest.fixture
def tiny_csv(tmp_path, monkeypatch):
    """16 small perovskite / rock-salt cells with varied lattice constants, written as a CSV with a cif column."""
    monkeypatch.setenv("XTALFORGE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        a = rng.uniform(3.7, 4.2)
        if i % 2:
            c = Crystal(np.eye(3) * a, [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]],
                        [38, 22, 8, 8, 8])
        else:
            c = Crystal(np.eye(3) * a, [[0, 0, 0], [0.5, 0.5, 0.5]], [11, 17])
        rows.append({"material_id": f"x-{i}", "cif": c.to_cif_string()})
    path = tmp_path / "tiny.csv"
    pd.DataFrame(rows).to_csv(path)
    return path


def fixed_loss(model: DAOG, data) -> float:
    """Loss on the whole tiny set at fixed times and noise (comparable before/after training)."""
    batch = collate(data, np.arange(len(data)))
    t = torch.linspace(1, 1000, len(data)).long()
    with torch.no_grad():
        return float(model.loss(batch, torch.Generator().manual_seed(0), t=t)[0])


def test_training_reduces_loss(tiny_csv, tmp_path):
    cfg = TrainConfig(data=str(tiny_csv), out_dir=str(tmp_path / "run"), max_steps=60, lr=3e-3, ema_decay=0.0, **TINY)
    data = load_csv(tiny_csv)
    torch.manual_seed(cfg.seed)
    before = fixed_loss(DAOG(cfg.model_config()), data)  # same initialisation as the run (same seed)
    ema_path = train(cfg)
    after = fixed_loss(DAOG.load(ema_path), data)
    assert after < 0.7 * before, (before, after)
    log = pd.read_json(tmp_path / "run" / "log.jsonl", lines=True)
    assert log["step"].iloc[-1] == 60 and np.isfinite(log["loss"]).all()


def test_resume_gives_the_same_state(tiny_csv, tmp_path):
    base = dict(data=str(tiny_csv), max_steps=8, lr=1e-3, **TINY)
    train(TrainConfig(out_dir=str(tmp_path / "straight"), **base))
    # interrupted after the first step (time limit), then the same command again continues to the end
    train(TrainConfig(out_dir=str(tmp_path / "resumed"), max_minutes=1e-9, **base))
    first = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=False)["state"]["step"]
    assert first < 8
    train(TrainConfig(out_dir=str(tmp_path / "resumed"), **base))
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=False)
    assert a["state"]["step"] == b["state"]["step"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    steps = pd.read_json(tmp_path / "resumed" / "log.jsonl", lines=True)["step"].tolist()
    assert steps == list(range(1, 9))  # no duplicated log lines after the resume


def test_config_file_and_overrides(tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text('{"hidden": 64, "lr": 0.001}')
    cfg = parse_config(["--config", str(cfg_file), "--lr", "0.002", "--pooled", "true"])
    assert cfg.hidden == 64 and cfg.lr == 0.002 and cfg.pooled is True


def test_cdvae_config_parses_typed_fields_and_bad_names_are_one_error():
    assert cdvae_overrides("cost_composition=10, latent=64") == {"cost_composition": 10.0, "latent": 64}
    assert isinstance(cdvae_overrides("latent=64")["latent"], int)
    assert cdvae_overrides("") == {}
    with pytest.raises(XtalforgeError, match="cost_compositon"):
        cdvae_overrides("cost_compositon=10")
    with pytest.raises(XtalforgeError, match="no number"):
        cdvae_overrides("beta_kl=small")


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_csv, tmp_path):
    out = tmp_path / "ddp"
    args = [f"--{k}={v}" for k, v in TINY.items()]
    # torchrun's module form: the venv's console scripts need not be on PATH
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "xtalforge.training.train", f"--data={tiny_csv}", f"--out_dir={out}", "--max_steps=3", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    assert ckpt["state"]["step"] == 3
    log = pd.read_json(out / "log.jsonl", lines=True)
    assert len(log) == 3  # rank 0 logs alone
    assert DAOG.load(out / "ema.pt") is not None
    assert sys.executable  # the test ran in this interpreter's environment


def test_user_csv_training_data_is_filtered_and_claimed_clean_for_no_benchmark(tmp_path):
    import pandas as pd

    from xtalforge.data.protocol import data_root
    from xtalforge.training.train import TrainConfig, load_training_data

    rows = pd.read_csv(data_root() / "perov_5" / "test.csv.gz").head(3)  # three perov_5 *test* rows
    rows.to_csv(tmp_path / "mine.csv", index=False)
    data, clean = load_training_data(TrainConfig(data=str(tmp_path / "mine.csv"), max_atoms=5))
    assert len(data) == 3 and clean == []
    small, _ = load_training_data(TrainConfig(data=str(tmp_path / "mine.csv"), max_atoms=4))
    assert len(small) == 0, "cells above max_atoms are dropped, as for benchmark data"


def test_aflow_structures_join_benchmark_training_data():
    from xtalforge.data.protocol import aflow_structures, training_set
    from xtalforge.errors import XtalforgeError
    from xtalforge.training.train import TrainConfig, load_training_data

    data, clean = load_training_data(TrainConfig(data="perov_5+aflow", max_atoms=20))
    extra = aflow_structures()
    assert clean == ["perov_5"]
    assert len(data) == len(training_set("perov_5")) + int((extra.num_atoms <= 20).sum())
    assert sum(mid.startswith("aflow:") for mid in data.ids) == int((extra.num_atoms <= 20).sum())
    with pytest.raises(XtalforgeError, match="next to 'aflow'"):
        load_training_data(TrainConfig(data="aflow"))


def test_initialise_loads_a_checkpoint_of_the_same_model(tmp_path):
    """Fine-tuning a model that has no DAO-G backbone (the symmetry proposer) from its own weights."""
    from xtalforge.models.symmetry_proposer import ProposerConfig, SymmetryProposer
    from xtalforge.training.train import initialise

    cfg = ProposerConfig(hidden=16, layers=1, heads=2)
    torch.manual_seed(0)
    source = SymmetryProposer(cfg)
    source.save(tmp_path / "proposer.pt")
    torch.manual_seed(1)
    target = SymmetryProposer(cfg)
    initialise(target, str(tmp_path / "proposer.pt"), "cpu")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
