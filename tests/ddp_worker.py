"""Run under torchrun by tests/test_train.py: train a few steps with DDP, then report per-rank weight
checksums, the DDP evaluation's metrics and (rank 0) a single-process evaluation of the same model."""

import json
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from rleseg.data import Collate
from rleseg.engine import validate
from rleseg.experiment import build_datasets, build_patch_scores, build_tokenizer, load_config
from rleseg.train import train


def main(config_path: str, report_path: str) -> None:
    config = load_config(config_path)
    result = train(config)
    checksum = float(sum(p.double().sum() for p in result.model.state_dict().values()))
    checksums = [None] * dist.get_world_size()
    dist.all_gather_object(checksums, checksum)
    if dist.get_rank() == 0:
        _, val = build_datasets(config, build_tokenizer(config))
        count = min(len(val), config.eval.max_samples)
        loader = DataLoader(Subset(val, range(count)), 2, collate_fn=Collate(result.model.config.max_seq_len))
        scores = validate(result.model, loader, build_patch_scores(config, result.model.tokenizer), config.eval,
                          torch.device("cpu"))
        report = {"world": dist.get_world_size(), "checksums": checksums, "steps": result.step,
                  "ddp_metrics": result.metrics,
                  "single_metrics": scores.compute()}
        with open(report_path, "w") as f:
            json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
