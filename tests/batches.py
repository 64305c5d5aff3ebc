"""Random BDM inputs shared by the test modules."""
import torch


def bdm_batch(rows: int, obs: int, act: int, done_rows=(1, 4)):
    """(s, a, s_next, a_next, done): states N(0, 1), actions U(-1, 1), done 1 on `done_rows`."""
    s, s_next = torch.randn(rows, obs), torch.randn(rows, obs)
    a, a_next = torch.rand(rows, act) * 2 - 1, torch.rand(rows, act) * 2 - 1
    done = torch.zeros(rows)
    done[list(done_rows)] = 1
    return s, a, s_next, a_next, done
