"""The /predict micro-batcher: batches form from what queues while one scores, every request gets its own answer
(or its batch's error), after-work runs once the answers are out and never fails one."""

import asyncio
import threading

import pytest

from serving.batcher import MicroBatcher


def _echo(log: list[list[int]], gate: threading.Event | None = None):
    def score(items: list[int]) -> tuple[list[int], list[int]]:
        if gate is not None:
            gate.wait(5)
        log.append(list(items))
        return [i * 10 for i in items], list(items)

    return score


def test_requests_queued_while_a_batch_scores_form_the_next_batch_up_to_the_limit() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()
    batcher = MicroBatcher(_echo(seen, gate), max_batch_size=4)

    async def main() -> list[int]:
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # the thread holds [0] at the gate
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 10)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest)

    answers = asyncio.run(main())
    batcher.close()
    assert answers == [i * 10 for i in range(10)]
    assert seen == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert batcher.batches == 4


def test_an_error_of_scoring_is_raised_in_every_request_of_its_batch_and_the_thread_goes_on() -> None:
    calls = []

    def score(items: list[int]) -> tuple[list[int], None]:
        calls.append(items)
        if len(calls) == 1:
            raise LookupError("no model")
        return items, None

    batcher = MicroBatcher(score, max_batch_size=8)

    async def main() -> None:
        with pytest.raises(LookupError, match="no model"):
            await batcher.submit(1)
        assert await batcher.submit(2) == 2

    asyncio.run(main())
    assert batcher.alive()
    batcher.close()
    assert not batcher.alive()


def test_wrong_number_of_answers_is_an_error_not_a_misrouted_answer() -> None:
    batcher = MicroBatcher(lambda items: ([1], None), max_batch_size=8)

    async def main() -> None:
        gate = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        results = await asyncio.gather(*gate, return_exceptions=True)
        assert any(isinstance(r, RuntimeError) for r in results)

    asyncio.run(main())
    batcher.close()


def test_after_work_runs_once_the_answers_are_out_and_its_failure_is_logged_not_raised(caplog) -> None:
    order: list[str] = []
    answered = threading.Event()

    def after(items: list[int], context: list[int]) -> None:
        order.append(f"after {context}")
        answered.wait(5)  # the request resolves while the after-work still runs
        raise ValueError("log writer broke")

    batcher = MicroBatcher(_echo([]), max_batch_size=8, after=after)

    async def main() -> int:
        answer = await batcher.submit(7)
        order.append("answered")
        answered.set()
        return answer

    assert asyncio.run(main()) == 70
    batcher.close()
    assert order == ["after [7]", "answered"]
    assert "after-work of a scored batch of 1 failed" in caplog.text


def test_a_wait_lets_a_lone_request_gather_company() -> None:
    seen: list[list[int]] = []
    batcher = MicroBatcher(_echo(seen), max_batch_size=8, wait_s=0.3)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, batcher.submit(2))

    asyncio.run(main())
    batcher.close()
    assert seen == [[1, 2]]


def test_a_cancelled_request_is_skipped_and_close_scores_what_is_queued() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()
    batcher = MicroBatcher(_echo(seen, gate), max_batch_size=8)

    async def main() -> None:
        task = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)
        task.cancel()  # the client went away while its batch scores
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await batcher.submit(2) == 20

    asyncio.run(main())
    batcher.close()
    assert seen == [[1], [2]]
    with pytest.raises(RuntimeError, match="stopped"):
        asyncio.run(batcher.submit(3))


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(_echo([]), max_batch_size=0)
