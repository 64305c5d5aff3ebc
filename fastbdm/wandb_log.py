"""Mirror a run's metric rows to Weights & Biases (`--wandb PROJECT`): one wandb run per training run
(a batch of seeds keeps one open per seed: reinit="create_new").

The wandb run id is drawn once and kept in RUN_DIR/wandb_id, so a resumed training run logs to the
same wandb run online (rows re-logged after a resume at steps wandb already has are dropped by wandb).
WANDB_MODE=offline writes under RUN_DIR/wandb/ with no network, one offline directory per process:
`wandb sync RUN_DIR/wandb/offline-run-*` uploads them all.
"""
import uuid
from pathlib import Path

from .durable import write_durable


class WandbMirror:
    """Wraps a metrics log: every row written to it is also logged to wandb at its update step."""

    def __init__(self, log, project: str, run_dir: Path, config: dict, group: str = None):
        import wandb

        self.log = log
        id_file = Path(run_dir) / "wandb_id"
        if not id_file.exists():
            write_durable(id_file, uuid.uuid4().hex[:16].encode())
        name = f"{config['env']}-seed{config['seed']}" if group is None else f"{group}-{config['env']}-seed{config['seed']}"
        try:
            self.run = wandb.init(project=project, dir=str(run_dir), config=config, group=group,
                                  id=id_file.read_text().strip(), name=name, resume="allow", reinit="create_new")
        except Exception as exc:  # wandb raises its own kinds (no key, no network, bad project)
            log.close()
            raise WandbError(f"--wandb {project}: wandb could not start ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); WANDB_MODE=offline needs no network") from None

    def write(self, row: dict) -> None:
        self.log.write(row)
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    def sync(self) -> None:
        """The metrics files on disk (wandb keeps its own record)."""
        self.log.sync()

    def close(self) -> None:
        self.log.close()
        self.run.finish()


class WandbError(Exception):
    """wandb could not start a run; the message is one line for the user."""
