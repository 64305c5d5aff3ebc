"""Running updates: eagerly, or on CUDA by replaying a captured CUDA graph of K pairs of updates.

Each captured pair is (critic/BDM/data-denoiser update, the same plus the actor and target update), run
as TD3SBC.update_pair: both batches and both updates' noise drawn first, at once (fastbdm.update_draws), the frozen
networks' outputs of both updates (one reverse chain), then the two updates' losses, backward passes, fused
capturable Adam steps, the target lerps and the device-side metric recording, all in the graph. The host only
replays it. The generators that the updates draw from (a seed's own, UpdateRunner's generator; a SeedBatch's, one
per seed) are registered with the graph, so that every replay advances their streams.
"""
from typing import List

import torch

from .monitor import UpdateMonitor
from .nvtx_ranges import phase
from .replay import TransitionBuffer
from .td3sbc import TD3SBC
from .update_draws import draw_updates

WARMUP_PAIRS = 2  # eager pairs on a side stream before capture (optimizer state, kernel compilation)


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (CUDA errors run to several)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class GraphCaptureError(RuntimeError):
    """Capturing a CUDA graph failed; the message is one line and names the eager fallback."""

    @classmethod
    def of(cls, what: str, error: Exception) -> "GraphCaptureError":
        """Quotes the first error of the capture: ending a failed capture raises a second one on top."""
        while isinstance(error.__context__, RuntimeError):
            error = error.__context__
        return cls(f"CUDA graph capture of {what} failed ({first_line(error)}); train eagerly with --no-graphs")


class UpdateRunner:
    """`run(n)` performs n TD3-SBC updates; graphs=True needs CUDA and a policy_freq of 2.

    With policy_freq 2 the updates run by pairs (TD3SBC.update_pair) from an even update count, a
    single update (TD3SBC.update) where a pair does not fit. pairs_per_graph: K pairs of updates
    unrolled in one graph (one replay = 2K updates); updates that do not fill a whole replay run eagerly.
    generator: the stream of the batches and the update noise (a torch.Generator on the agent's device;
    default torch's global one).
    """

    def __init__(self, agent: TD3SBC, buffer: TransitionBuffer, monitor: UpdateMonitor, batch_size: int,
                 graphs: bool = False, pairs_per_graph: int = 1, generator: torch.Generator = None):
        self.agent, self.buffer, self.monitor, self.batch_size = agent, buffer, monitor, batch_size
        self.graphs, self.pairs_per_graph = graphs, pairs_per_graph
        self.generator = generator
        self.graph = None
        self.warmup_pairs_left = WARMUP_PAIRS
        if graphs and agent.config.policy_freq != 2:
            raise ValueError("CUDA graphs capture a pair of updates: they need policy_freq == 2")

    def step(self) -> None:
        """One update, eagerly: sample, update, record metrics on the device."""
        actor_step = (self.agent.num_updates + 1) % self.agent.config.policy_freq == 0
        (batch,), (noise,) = self._draw([actor_step])
        self._record(self.agent.update(batch, noise))

    def _draw(self, actor_steps):
        """The batches and noises of consecutive updates (actor_steps[u]: update u steps the actor), drawn at
        once from self.generator (fastbdm.update_draws)."""
        return draw_updates(self.agent, self.buffer, self.batch_size, actor_steps, [self.generator], seed_axis=False)

    def _record(self, *updates: dict) -> None:
        """The metrics of one update or of a pair's two (one UpdateMonitor.record: seven kernels, or one fused launch)."""
        with phase("metrics"):
            self.monitor.record(*updates)

    def pair(self) -> None:
        """One update pair, eagerly (policy_freq 2, even update count): both batches and noises drawn at once,
        TD3SBC.update_pair, both updates' metrics recorded in one call."""
        self._record(*self.agent.update_pair(*self._draw([False, True])))

    def _warmup_pair(self) -> None:
        """One real pair on a side stream: optimizer state and kernels exist before capture."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.pair()
        torch.cuda.current_stream().wait_stream(side)
        self.warmup_pairs_left -= 1

    def _capture(self) -> None:
        """Records 2K updates into self.graph without running them; on failure the runner is unchanged."""
        graph, updates_before = torch.cuda.CUDAGraph(), self.agent.num_updates
        for generator in self.generators():
            graph.register_generator_state(generator)  # each replay moves the stream on
        try:
            with torch.cuda.graph(graph):
                for _ in range(self.pairs_per_graph):
                    self.pair()
        except RuntimeError as error:
            raise GraphCaptureError.of("the update", error) from error
        finally:
            self.agent.num_updates = updates_before
        self.graph = graph

    def generators(self) -> List[torch.Generator]:
        """The generators the captured updates draw from, besides torch's global one."""
        return [] if self.generator is None else [self.generator]

    def run(self, n: int, done=None) -> None:
        """n updates; done(k) (optional) is called as each k of them is issued (1 per single update, 2 per
        eager pair or warm-up pair, 2K per graph replay), from the host's count: no device synchronisation."""
        done = done or (lambda count: None)
        by_pairs = self.agent.config.policy_freq == 2
        per_replay = 2 * self.pairs_per_graph
        while n > 0:
            if n == 1 or not by_pairs or self.agent.num_updates % 2:
                self.step()
                count = 1
            elif not self.graphs:
                self.pair()
                count = 2
            elif self.graph is None and self.warmup_pairs_left:
                self._warmup_pair()
                count = 2
            elif n < per_replay:
                self.pair()
                count = 2
            else:
                if self.graph is None:
                    self._capture()
                self.graph.replay()
                self.agent.num_updates += per_replay
                count = per_replay
            n -= count
            done(count)


class SeedBatchRunner(UpdateRunner):
    """UpdateRunner of a SeedBatch (fastbdm.seed_batch): each update draws every seed's batch and noise from
    that seed's generator (batch.generators, registered with the graph) and updates all seeds at once;
    monitors[k] records seed k's metrics: SeedBatchRunner(batch, buffer, monitors, batch_size, graphs,
    pairs_per_graph). The monitors are stacked (UpdateMonitor.stack, the runner's `monitor`: one record for
    all seeds); each still reads its own seed."""

    def __init__(self, agent, buffer: TransitionBuffer, monitors: List[UpdateMonitor], batch_size: int,
                 graphs: bool = False, pairs_per_graph: int = 1):
        super().__init__(agent, buffer, UpdateMonitor.stack(monitors), batch_size, graphs, pairs_per_graph)

    def step(self) -> None:
        self._record(self.agent.step(self.buffer, self.batch_size))

    def pair(self) -> None:
        self._record(*self.agent.pair_step(self.buffer, self.batch_size))

    def generators(self) -> List[torch.Generator]:
        return list(self.agent.generators)


class GraphedPolicy:
    """TD3SBC.act on a fixed number of rows, captured once in a CUDA graph and replayed per call.

    The graph reads the actor's parameters in place, so it follows training without recapture.
    obs (rows, obs_dim) raw observations on any device -> actions (rows, act_dim) on the CPU.
    """

    def __init__(self, agent: TD3SBC, rows: int):
        device = agent.obs_mean.device
        self.static_obs = torch.zeros(rows, agent.obs_mean.shape[0], device=device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad():  # forward kernels only: no autograd record in the captured call
            with torch.cuda.stream(side):
                agent.act(self.static_obs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph):
                    self.static_actions = agent.act(self.static_obs)
            except RuntimeError as error:
                raise GraphCaptureError.of("the evaluation policy", error) from error

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.shape != self.static_obs.shape:
            raise ValueError(f"GraphedPolicy was captured for observations of shape {tuple(self.static_obs.shape)}, "
                             f"got {tuple(obs.shape)}: build one per number of parallel episodes")
        self.static_obs.copy_(obs)
        self.graph.replay()
        return self.static_actions.cpu()
