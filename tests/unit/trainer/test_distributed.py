"""trainer/distributed.py: two real gloo ranks on this machine sum what the step needs."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.support import free_port
from trainer.distributed import ALONE, Group


def _rank(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))  # as torch.distributed.run sets them  # fmt: skip
    group = Group.join()
    try:
        first = torch.nn.Parameter(torch.zeros(2, 3))
        second = torch.nn.Parameter(torch.zeros(4))
        first.grad = torch.full((2, 3), float(rank + 1))  # rank 1's second has no gradient
        second.grad = torch.arange(4.0) if rank == 0 else None
        group.sum_gradients([first, second])
        results[rank] = {
            "mine": [i for i in range(5) if group.mine(i)],
            "sum": group.sum([rank + 1.0, 10.0 * rank]),
            "first": first.grad.tolist(),
            "second": second.grad.tolist(),
            "agree": group.agree(rank == 0),
            "gather": group.gather({"rank": rank}),
        }
    finally:
        group.leave()


def test_two_ranks_deal_the_micro_batches_and_sum_tokens_losses_and_gradients():
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(free_port(), results), nprocs=2, join=True)
    assert results[0]["mine"] == [0, 2, 4] and results[1]["mine"] == [1, 3]
    for rank in (0, 1):
        assert results[rank]["sum"] == [3.0, 10.0]
        assert results[rank]["first"] == [[3.0] * 3] * 2
        assert results[rank]["second"] == [0.0, 1.0, 2.0, 3.0]
        assert results[rank]["agree"] is True  # rank 0's
        assert results[rank]["gather"] == [{"rank": 0}, {"rank": 1}]


def test_one_process_is_a_group_of_one_that_communicates_nothing():
    assert (ALONE.rank, ALONE.world, ALONE.main) == (0, 1, True)
    assert all(ALONE.mine(i) for i in range(3))
    assert ALONE.sum([1.5, 2.0]) == [1.5, 2.0] and ALONE.agree(False) is False
    assert not dist.is_initialized()
