"""Mirror a run's metric rows to Weights & Biases (`--wandb PROJECT`): one wandb run per training run.

The wandb run id is derived from the run directory, so a resumed training run continues its wandb run;
WANDB_MODE=offline writes it under RUN_DIR/wandb/ with no network (sync later with `wandb sync`).
"""
import hashlib
from pathlib import Path


class WandbMirror:
    """Wraps a metrics log: every row written to it is also logged to wandb at its update step."""

    def __init__(self, log, project: str, run_dir: Path, config: dict, group: str = None):
        try:
            import wandb
        except ImportError:
            raise ImportError("--wandb needs the wandb package: pip install -e '.[sweep]'") from None
        self.log = log
        run_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=project, dir=str(run_dir), config=config, group=group, id=run_id,
                              name=f"{config['env']}-seed{config['seed']}", resume="allow", reinit="finish_previous")

    def write(self, row: dict) -> None:
        self.log.write(row)
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    def sync(self) -> None:
        """The metrics files on disk (wandb keeps its own record)."""
        self.log.sync()

    def close(self) -> None:
        self.log.close()
        self.run.finish()
