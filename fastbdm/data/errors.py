"""The one exception every dataset problem raises."""


class DatasetError(ValueError):
    """A dataset cannot be found, read or used; the message says what is wrong and what to do (one line)."""


class PartialDatasetError(DatasetError):
    """A generation stopped short of the level its dataset's name promises; its data were kept as the
    partial dataset `dataset_id` (fastbdm/<env>/<kind>-partial-v0). The message says how to get there."""

    def __init__(self, message: str, dataset_id: str):
        super().__init__(message)
        self.dataset_id = dataset_id
