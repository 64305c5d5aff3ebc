"""The one exception every dataset problem raises."""


class DatasetError(ValueError):
    """A dataset cannot be found, read or used; the message says what is wrong and what to do (one line)."""


class PartialDatasetError(DatasetError):
    """A generation stopped short of the level its dataset's name promises; its data were kept as the
    partial dataset `dataset_id` (fastbdm/<env>/<kind>-partial-v0). The message says how to get there."""

    def __init__(self, message: str, dataset_id: str):
        super().__init__(message)
        self.dataset_id = dataset_id


class GenerationStopped(Exception):
    """A generation stopped by a signal (Ctrl-C: SIGINT, or SIGTERM); its state was saved for --resume."""

    EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}

    def __init__(self, name: str, signal_name: str, steps: int, checkpoint):
        super().__init__(f"{name}: generation stopped by {signal_name} at TD3 step {steps:,}; its state is saved in "
                         f"{checkpoint}; continue it with: python -m fastbdm.data.generate --env {name} --resume")
        self.exit_code = self.EXIT_CODES.get(signal_name, 1)
