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


def _threads_of(log: list[int]):
    def score(items: list[int]) -> tuple[list[int], list[int]]:
        log.append(threading.get_ident())
        if items == [13]:
            raise LookupError("no model")
        return [i * 10 for i in items], list(items)

    return score


def test_a_lone_request_is_scored_on_the_event_loop_and_its_after_work_runs_once_its_answer_is_out() -> None:
    threads: list[int] = []
    order: list[str] = []
    batcher = MicroBatcher(_threads_of(threads), max_batch_size=8, inline_when_alone=True,
                           after=lambda items, context: order.append(f"after {context}"))

    async def main() -> None:
        assert await batcher.submit(7) == 70
        order.append("answered")  # in the same step as the answer: the after-work comes after it
        await asyncio.sleep(0)
        with pytest.raises(LookupError, match="no model"):  # an error of scoring is this request's, the next goes on
            await batcher.submit(13)
        assert await batcher.submit(8) == 80
        await asyncio.sleep(0)

    asyncio.run(main())
    batcher.close()
    assert threads == [threading.get_ident()] * 3  # all on this thread, the event loop's
    assert order == ["answered", "after [7]", "after [8]"]
    assert batcher.inline == 2 and batcher.batches == 2


def test_requests_arriving_together_go_to_the_thread_as_one_batch_though_it_is_idle() -> None:
    threads: list[int] = []
    seen: list[list[int]] = []
    score = _threads_of(threads)

    def scored(items: list[int]) -> tuple[list[int], list[int]]:
        seen.append(list(items))
        return score(items)

    batcher = MicroBatcher(scored, max_batch_size=8, inline_when_alone=True)

    async def main() -> list[int]:
        return await asyncio.gather(*(batcher.submit(i) for i in range(5)))  # one turn of the loop: together

    assert asyncio.run(main()) == [0, 10, 20, 30, 40]
    batcher.close()
    assert seen == [[0, 1, 2, 3, 4]] and threads != [threading.get_ident()] and batcher.inline == 0


def test_a_lone_request_waits_for_the_thread_while_a_batch_scores_and_when_a_wait_is_asked() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()
    busy = MicroBatcher(_echo(seen, gate), max_batch_size=8, inline_when_alone=True)

    async def main() -> list[int]:
        pair = [asyncio.ensure_future(busy.submit(i)) for i in (1, 2)]  # together: to the thread, held at the gate
        await asyncio.sleep(0.05)
        lone = asyncio.ensure_future(busy.submit(3))  # alone, but the thread is scoring: it queues
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*pair, lone)

    assert asyncio.run(main()) == [10, 20, 30]
    busy.close()
    assert seen == [[1, 2], [3]] and busy.inline == 0

    waiting = MicroBatcher(_echo([]), max_batch_size=8, wait_s=0.01, inline_when_alone=True)
    assert asyncio.run(waiting.submit(4)) == 40 and waiting.inline == 0  # a wait asks for company: the thread's
    waiting.close()
